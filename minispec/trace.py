"""The trace: one JSON record per speculative step, enough to replay a run without the model.

Notation as in Leviathan et al. 2023: p = target, q = draft. A trace is a `Trace`; `trace_json`
writes it as JSON text, `save_trace` into a file, `load_trace` reads it back. In JSON:

    {"format": "minispec-trace", "version": 1,
     "notation": "p = target distribution, q = draft distribution (Leviathan et al. 2023)",
     "model", "drafter", "k", "sampling": {"temperature", "top_k", "top_p", "greedy"}, "seed",
     "prompt_ids", "prompt_text", "drafter_spec",          # make_drafter's spec, or null
     "tree",                                               # the node budget N, null: chains
     "first_token": {"token", "text", "top_p": [...]},     # from the prefill, no speculation
     "steps": [step record, ...],
     "ids", "text", "stopped_by", "stats": {...}}         # the result, as `Stats.to_dict()`

A step record has the fields of `STEP_FIELDS`, each with its meaning; its producer, the
speculative loop, writes it (`speculative.step_record`). This module holds the format, saving,
loading and replay: nothing here needs the model.

Greedy runs: p and q in the records are softmax(logits) at temperature 1, for display; the rule
itself only compares the draft with argmax p (`target_argmax`).

A run with token trees (`speculative_generate(..., tree=N)`, "tree": N in the header, and "k"
is N, the most tokens a step drafts) writes the same fields for each step, read along the
accepted path: "drafted" holds the path's nodes, then the first sibling the rule tried and
rejected at its end (if it had children), "decisions" the rule's trial of each, so a replay
that knows only chains replays it. The whole tree is under the step's "tree" key
(`TREE_FIELDS`); chain steps have no "tree" key. Traces written before trees existed have
neither key, and load and replay as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from minispec.errors import InputError
from minispec.sampling import SamplingParams
from minispec.stats import Stats

if TYPE_CHECKING:
    from minispec.drafters.base import Drafter
    from minispec.model import Model

FORMAT, VERSION = "minispec-trace", 1
NOTATION = "p = target distribution, q = draft distribution (Leviathan et al. 2023)"

STEP_FIELDS = {  # a step record's fields -> what each holds (n drafts, j of them accepted)
    "step": "index of the step (= the index of the target's verify forward)",
    "context_length": "tokens in the context before the step (prompt + emitted so far)",
    "kv_length_before": "positions in the target's KV cache before verifying (context_length - 1)",
    "drafted": "[{position, token, text, q, top_q}]: q = q_i(d_i); top_q = q_i's top few "
    "([] for a drafter without probabilities, whose q is one-hot)",
    "target": "[{position, top_p}]: row i = p_i, the target's distribution after "
    "[context, d_1..d_i]; n+1 rows for n drafts, the last one for the bonus. The rule reads "
    "rows 0..accepted only (it stops at the first rejection): later rows have top_p []",
    "decisions": "[{position, token, text, p, q, ratio, u, accept_probability, target_argmax, "
    "accepted}]: one per tested draft, stopping at the first rejection; ratio = p/q; "
    "u = the uniform draw (null when greedy)",
    "accepted": "j, how many drafts were kept",
    "next_token": '{token, text, kind: "corrected" | "bonus", prob}: prob is its probability '
    "under the distribution it was drawn from (residual or p_{n+1})",
    "residual_top": "on a sampled rejection: the top few of norm(max(0, p - q)); else null",
    "emitted": "the tokens this step added (accepted drafts + next_token, cut after an EOS)",
    "emitted_text": "the emitted tokens as text (null without a tokenizer)",
    "kv_length_after": "positions kept after the rollback (kv_length_before + 1 + j)",
    "verify_forwards": "always 1: one verification pass per step (`speculative.verify`); "
    "kept because scripts read it",
    "draft_s": "seconds spent drafting",
    "verify_s": "seconds spent verifying",
    "tree": "token-tree steps only (absent on chain steps): the whole tree, see TREE_FIELDS",
}

TREE_FIELDS = {  # a tree step's "tree" -> what each holds (node 0 = the root, the newest token)
    "proposal": '"top" (siblings = the drafter\'s top tokens, judged one-hot) or "sampled" '
    "(drawn from q without replacement, in the order tried)",
    "nodes": "[{node, token, text, parent, depth, q, p, verdict}]: q = the node's q under its "
    "parent (null for the root, and for siblings without a q: top); p = the target's "
    "probability of the token at its parent's row (the shown distribution: softmax when "
    'greedy); verdict "accepted" (on the path, the root too) | "rejected" | "untried"',
    "mask": "the ancestor mask, (n+1) x (n+1) of 0/1: row i marks the nodes node i attends to",
    "path": "the accepted nodes, root first",
    "siblings": "[{node, trials: [{node, token, p, q, accept_probability, u, accepted, "
    "residual_top}]}]: per node of the path with children, the siblings tried in order; p and "
    "q are the stage's (the target after earlier rejections, and the q the sibling was drawn "
    "from; greedy: as in nodes), residual_top the top few of the target after a sampled "
    "rejection (else null)",
    "kv": "{before, written, after, moved: [[from_row, to_row], ...]}: cache rows before the "
    "verify pass, rows it wrote (n+1), rows kept, and the path's rows moved next to the prefix",
}


# The fields only some step records have: "tree", on a tree step alone (chain steps and older
# traces have none).
OPTIONAL_STEP_FIELDS = frozenset({"tree"})


@dataclass
class Trace:
    model: str
    drafter: str
    k: int
    sampling: dict
    seed: int
    prompt_ids: list[int]
    prompt_text: str | None = None
    drafter_spec: str | None = None  # what `make_drafter` built it from (None: built otherwise)
    tree: int | None = None  # the node budget of a token-tree run; None: chains
    first_token: dict | None = None
    steps: list[dict] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stopped_by: str = ""
    stats: dict = field(default_factory=dict)

    @classmethod
    def begin(
        cls,
        model: Model,
        drafter: Drafter | None,
        k: int,
        sampling: SamplingParams,
        seed: int,
        prompt_ids: list[int],
        tree: int | None = None,
    ) -> Trace:
        """The header of a run's trace; the loop appends step records, then calls `finish`."""
        tok = model.tokenizer
        return cls(
            model=model.name,
            drafter=drafter.name if drafter is not None else "none",
            k=k,
            sampling={
                "temperature": sampling.temperature,
                "top_k": sampling.top_k,
                "top_p": sampling.top_p,
                "greedy": sampling.greedy,
            },
            seed=seed,
            prompt_ids=[int(t) for t in prompt_ids],
            prompt_text=tok.decode(list(prompt_ids), skip_special_tokens=False) if tok else None,
            drafter_spec=getattr(drafter, "spec", None) if drafter is not None else "none",
            tree=tree,
        )

    def finish(self, ids: list[int], text: str, stopped_by: str, stats: Stats) -> None:
        self.ids, self.text, self.stopped_by = [int(t) for t in ids], text, stopped_by
        self.stats = stats.to_dict()

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "notation": NOTATION,
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        if d.get("format") != FORMAT:
            raise InputError("not a minispec trace (no 'format': 'minispec-trace')")
        if d.get("version") != VERSION:
            raise InputError(f"trace version {d.get('version')} is not {VERSION}")
        return cls(**{name: d[name] for name in cls.__dataclass_fields__ if name in d})


def trace_json(trace: Trace) -> str:
    """The trace as JSON text: what `save_trace` writes and the app's download offers."""
    return json.dumps(trace.to_dict(), ensure_ascii=False, indent=1) + "\n"


def save_trace(trace: Trace, path: str | Path) -> None:
    Path(path).write_text(trace_json(trace), encoding="utf-8")


def load_trace(path: str | Path) -> Trace:
    return Trace.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------- replay


@dataclass
class ReplayStep:
    record: dict
    context: list[int]  # the tokens before the step (prompt + emitted so far)
    kept: list[int]  # the drafts the target accepted
    emitted: list[int]  # kept + the corrected or bonus token


def replay(trace: Trace) -> Iterator[ReplayStep]:
    """Walk a recorded run step by step, rebuilding the context from the records alone.

    Checks as it goes that each record is consistent with the context it claims to extend.
    """
    context = list(trace.prompt_ids)
    if trace.first_token is not None:
        context.append(trace.first_token["token"])
    for record in trace.steps:
        if record["context_length"] != len(context):
            raise InputError(f"step {record['step']}: context length does not match the replay")
        j = record["accepted"]
        kept = [d["token"] for d in record["drafted"][:j]]
        emitted = (kept + [record["next_token"]["token"]])[: len(record["emitted"])]
        if emitted != record["emitted"]:
            raise InputError(f"step {record['step']}: emitted tokens do not follow the decisions")
        yield ReplayStep(record, list(context), kept, emitted)
        context.extend(emitted)


def replayed_ids(trace: Trace) -> list[int]:
    """The new tokens of a recorded run, rebuilt from its steps."""
    steps = list(replay(trace))
    first = [trace.first_token["token"]] if trace.first_token is not None else []
    return first + [t for s in steps for t in s.emitted]


def stats_from_trace(trace: Trace) -> Stats:
    """Recount the statistics from the records (timings included): no model needed."""
    stats = Stats(k=trace.k)
    for record in trace.steps:
        decisions = [d["accepted"] for d in record["decisions"]]
        n_drafted, n_emitted, depth = len(record["drafted"]), len(record["emitted"]), None
        if "tree" in record:  # every node counts as drafted; the positions are depths
            nodes = record["tree"]["nodes"]
            n_drafted, depth = len(nodes) - 1, max(node["depth"] for node in nodes)
        times = record["draft_s"], record["verify_s"]
        stats.add_step(n_drafted, decisions, n_emitted, *times, depth)
    stats.new_tokens = len(replayed_ids(trace))
    recorded = Stats.from_dict(trace.stats) if trace.stats else None
    if recorded is not None:
        stats.prefill_s, stats.decode_s = recorded.prefill_s, recorded.decode_s
    return stats
