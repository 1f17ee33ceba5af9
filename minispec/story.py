"""From a recorded trace to what the page shows: every token with where it came from, per step.

Reads only the trace (a step record's fields are `minispec.trace.STEP_FIELDS`), so a recorded run
replays on a laptop that has no model. The app (viz/) and the replay web page
(`minispec.replay_html`) both read it.

Where a token comes from (its "source"), the colours the whole page uses for it:

    first       the first new token: drawn from the prefill, before any speculation
    accepted    a drafted token the target accepted
    corrected   the target's own token after a rejection (drawn from norm(max(0, p - q)))
    bonus       the target's extra token when every draft was accepted (drawn from p_{n+1})

A token-tree step (`speculative_generate(..., tree=N)`) keeps every chain field, describing the
accepted path, and adds a "tree" block: its nodes with their verdicts, the attention mask, the
accepted path, the siblings the rule tried one by one, and the cache's compaction
(`check_tree_record` lists what the page reads of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minispec.stats import Stats
from minispec.trace import (
    OPTIONAL_STEP_FIELDS,
    STEP_FIELDS,
    ReplayStep,
    Trace,
    replay,
    stats_from_trace,
)


@dataclass
class Token:
    """One token of the run, as the token strip shows it."""

    token: int
    text: str
    source: str  # "first", "accepted", "corrected" or "bonus"
    step: int | None = None  # the step that emitted it (None: the prefill's token)
    p: float | None = None  # the target's probability of it where it was decided
    q: float | None = None  # the draft's probability (accepted drafts only)


@dataclass
class Story:
    """A run, ready to show: the tokens in order and the step records beside them."""

    trace: Trace
    prompt_text: str
    new: list[Token]  # every new token, the first (prefill) one included
    steps: list[dict]  # the trace's step records
    contexts: list[int] = field(default_factory=list)  # [i]: new tokens before step i
    stats: Stats | None = None

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def context_text(self, step: int) -> str:
        """The prompt and every new token emitted before `step`, as one text."""
        before = self.new[: self.contexts[step]]
        return self.prompt_text + "".join(t.text for t in before)


def token_label(entry: dict) -> str:
    """The text of a trace entry ({token, text, ...}); its id when the trace has no text."""
    text = entry.get("text")
    return text if isinstance(text, str) else f"⟨{entry['token']}⟩"


def story_from_trace(trace: Trace) -> Story:
    """Rebuild the run from its records; raises ValueError if the records do not fit together.

    Every field a panel reads is touched here, so a trace that passes is one the page can show.
    """
    check_header(trace)
    prompt_text = trace.prompt_text
    if not isinstance(prompt_text, str):  # a trace recorded without a tokenizer
        prompt_text = " ".join(f"⟨{t}⟩" for t in trace.prompt_ids)
    new: list[Token] = []
    if trace.first_token is not None:
        first = trace.first_token
        p = next((e["prob"] for e in first.get("top_p", []) if e["token"] == first["token"]), None)
        new.append(Token(int(first["token"]), token_label(first), "first", None, p))

    contexts = []
    try:
        for s in replay(trace):
            r = s.record
            contexts.append(len(new))
            check_step_record(r)
            new += emitted_tokens(s)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"a step record is missing or mangles a field ({err!r})") from err
    return Story(trace, prompt_text, new, list(trace.steps), contexts, stats_from_trace(trace))


def emitted_tokens(s: ReplayStep) -> list[Token]:
    """The tokens one step added: its accepted drafts, then the correction or bonus.

    An end-of-sequence token can end the step anywhere, so this walks `emitted`, not `kept`.
    """
    r, nxt = s.record, s.record["next_token"]
    tokens = []
    for i in range(len(s.emitted)):
        if i < len(s.kept):
            d = r["decisions"][i]
            tokens.append(Token(d["token"], token_label(d), "accepted", r["step"], d["p"], d["q"]))
        else:
            tokens.append(
                Token(nxt["token"], token_label(nxt), nxt["kind"], r["step"], nxt["prob"])
            )
    return tokens


def check_header(trace: Trace) -> None:
    """The run-wide fields the page shows must have their documented types."""
    s = trace.sampling
    if not isinstance(s, dict) or not all(name in s for name in ("greedy", "temperature", "top_p")):
        raise ValueError("its 'sampling' must hold greedy, temperature and top_p")
    if not all(isinstance(s[name], int | float) for name in ("temperature", "top_p")):
        raise ValueError("its temperature and top_p must be numbers")
    if not isinstance(trace.k, int) or not isinstance(trace.prompt_ids, list):
        raise ValueError("its 'k' must be a number and 'prompt_ids' a list")


def check_step_record(r: dict) -> None:
    missing = [name for name in STEP_FIELDS if name not in r and name not in OPTIONAL_STEP_FIELDS]
    if missing:
        raise ValueError(f"step {r.get('step', '?')} has no {', '.join(missing)}")
    n, j = len(r["drafted"]), r["accepted"]
    if len(r["target"]) != n + 1:
        raise ValueError(f"step {r['step']}: {n} drafts need {n + 1} target rows")
    if not 0 <= j <= n or len(r["decisions"]) < j:
        raise ValueError(f"step {r['step']}: {j} accepted drafts out of {n} does not add up")
    if r["next_token"]["kind"] not in ("corrected", "bonus"):
        raise ValueError(f"step {r['step']}: next token kind {r['next_token']['kind']!r}")
    for row in r["target"]:
        for e in row["top_p"]:
            float(e["prob"]), int(e["token"])
    for d in r["drafted"]:
        float(d["q"]), int(d["token"])
    for d in r["decisions"]:
        float(d["p"]), float(d["q"]), bool(d["accepted"]), float(d["accept_probability"])
    if r.get("tree") is not None:
        check_tree_record(r)


# ------------------------------------------------------------------ what one step amounts to


def step_summary(r: dict) -> str:
    """One sentence: what this step drafted, kept and added."""
    n, j = len(r["drafted"]), r["accepted"]
    kind = r["next_token"]["kind"]
    added = "a bonus token" if kind == "bonus" else "the target's correction"
    emitted = len(r["emitted"])
    if n == 0:
        return "No draft this step: one target forward gives one token, as in plain decoding."
    return (
        f"{j} of {n} drafted tokens accepted, plus {added}: "
        f"{emitted} token{'s' if emitted != 1 else ''} for one target forward."
    )


def draft_fate(r: dict) -> list[str]:
    """For each drafted token: "accepted", "rejected" or "unchecked" (after a rejection)."""
    fates = []
    for i, _ in enumerate(r["drafted"]):
        if i < r["accepted"]:
            fates.append("accepted")
        elif i == r["accepted"] and i < len(r["decisions"]):
            fates.append("rejected")
        else:
            fates.append("unchecked")
    return fates


# ------------------------------------------------------------------ token trees

NODE_VERDICTS = ("accepted", "rejected", "untried")  # what the rule did with a drafted node


def tree_budget(trace: Trace) -> int | None:
    """The run's node budget per step (the trace's "tree"); None for a chain run.

    A trace that records no budget but has tree steps: the most nodes any step drafted.
    """
    budget = getattr(trace, "tree", None)
    if isinstance(budget, int):
        return budget
    sizes = [len(r["tree"]["nodes"]) - 1 for r in trace.steps if r.get("tree") is not None]
    return max(sizes) if sizes else None


def check_tree_record(r: dict) -> None:
    """A tree step's block must hold what the page draws: nodes whose parents come first, an
    (n + 1) x (n + 1) mask, a path of accepted nodes from the root, trials naming real nodes."""
    t, step = r["tree"], r["step"]
    nodes = t["nodes"]
    if not nodes or nodes[0]["parent"] not in (None, -1):
        raise ValueError(f"step {step}: a tree's node 0 is its root, with no parent")
    for i, node in enumerate(nodes[1:], start=1):
        if not 0 <= int(node["parent"]) < i:
            raise ValueError(f"step {step}: tree node {i} comes before its parent")
        if node["verdict"] not in NODE_VERDICTS:
            raise ValueError(f"step {step}: tree node {i} has verdict {node['verdict']!r}")
        int(node["token"]), int(node["depth"])
    n = len(nodes)
    if len(t["mask"]) != n or any(len(row) != n for row in t["mask"]):
        raise ValueError(f"step {step}: a tree of {n} nodes needs a {n} x {n} mask")
    path = [int(i) for i in t["path"]]
    if not path or path[0] != 0 or any(not 0 < i < n for i in path[1:]):
        raise ValueError(f"step {step}: the accepted path must start at the root, node 0")
    for parent, child in zip(path, path[1:], strict=False):
        if int(nodes[child]["parent"]) != parent or nodes[child]["verdict"] != "accepted":
            raise ValueError(f"step {step}: the accepted path is not a chain of accepted nodes")
    for group in t["siblings"]:
        for trial in group["trials"]:
            if not 0 < int(trial["node"]) < n or int(nodes[trial["node"]]["parent"]) != int(
                group["node"]
            ):
                raise ValueError(f"step {step}: a sibling trial names a node that is not a child")
            bool(trial["accepted"])
    kv = t["kv"]
    int(kv["before"]), int(kv["written"]), int(kv["after"])
    for move in kv["moved"]:
        int(move[0]), int(move[1])


def tree_summary(r: dict) -> str:
    """One sentence: what a tree step drafted, kept and added."""
    t = r["tree"]
    n, j = len(t["nodes"]) - 1, len(t["path"]) - 1
    tried = sum(len(group["trials"]) for group in t["siblings"])
    kind = r["next_token"]["kind"]
    added = "a bonus token" if kind == "bonus" else "the target's correction"
    emitted = len(r["emitted"])
    return (
        f"A tree of {n} drafted node{'s' if n != 1 else ''}, {tried} of them tried: a path of "
        f"{j} accepted, plus {added}: {emitted} token{'s' if emitted != 1 else ''} for one "
        "target forward."
    )
