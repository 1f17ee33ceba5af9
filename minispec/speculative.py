"""Speculative decoding: a cheap drafter guesses k tokens, the target checks them in one forward.

Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding",
Algorithm 1; Chen et al. 2023 ("speculative sampling") give the same rule. Notation here, as in
Leviathan et al.: **p is the target's distribution, q the draft's** (Chen et al. swap the letters).

One step, from a context whose newest token the target has not read yet:

    1. draft:    the drafter proposes d_1..d_n (n <= k) and, if it has them, q_1..q_n
    2. verify:   ONE target forward over [newest, d_1, ..., d_n] gives n+1 rows: p_1..p_{n+1},
                 p_i the target's distribution for the token after d_{i-1}
    3. accept or reject, i = 1..n:
                 greedy (`accept_greedy`): accept d_i while d_i = argmax p_i; at the first
                          mismatch emit argmax p_i
                 sampled (`accept_or_reject`): accept d_i with probability
                          min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit a token from
                          norm(max(0, p_i - q_i))
                 all n accepted: emit a bonus token from p_{n+1} (its argmax when greedy)
    4. roll back: the target's KV cache (and the drafter's state) keep only accepted positions

Each step emits between 1 and n+1 tokens for one target forward, and the tokens come out with
exactly the target's distribution (Leviathan et al., Theorem 1; greedy: exactly its argmaxes).
For that, temperature, top-k and top-p must shape p and q identically: both go through
`sampling.distribution`.

With `speculative_generate(..., tree=N)` a step drafts a token tree of up to N nodes instead
(`minispec.tree`: several candidates per position): `verify_tree` reads every node in one
forward, the rule walks from the root trying siblings in turn (`tree.accept_tree_greedy`,
`tree.accept_tree_sampled`), and `tree.compact` keeps the accepted path's keys and values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minispec.acceptance import acceptance_probability, residual_distribution
from minispec.drafters.base import Draft, DraftContext, Drafter, one_hot
from minispec.errors import InputError
from minispec.generate import (
    Generation,
    check_max_new_tokens,
    check_prompt,
    decode_text,
    next_token,
)
from minispec.kernels import top_n
from minispec.kv_cache import KVCache, new_cache
from minispec.model import ForwardOutput, Model, forward_hidden
from minispec.sampling import (
    GREEDY,
    SamplingParams,
    SoftmaxRow,
    distribution,
    sample,
    shown,
)
from minispec.stats import Stats
from minispec.trace import Trace
from minispec.tree import (
    SAMPLED,
    TokenTree,
    TreeVerdict,
    Trial,
    accept_tree_greedy,
    accept_tree_sampled,
    ancestor_mask,
    chain,
    check_tree,
    compact,
    depths,
    tree_mask,
)

# The most tokens drafted per step. Acceptance decays geometrically with k while the verify pass
# grows with its rows (`minispec bench` times T = 1..16): a larger k does not pay on a CPU.
MAX_K = 16
# The most nodes a token tree drafts per step: one verify pass reads them all, and past a few
# dozen rows the pass costs more than the extra accepted tokens save.
MAX_TREE_NODES = 64


# ----------------------------------------------------------------------------- the rule


@dataclass
class Decision:
    """The rule's verdict on one drafted token x = d_i."""

    position: int  # i - 1: 0 for the first drafted token
    token: int  # x
    target_argmax: int  # argmax p_i
    accepted: bool
    accept_probability: float  # min(1, p/q) sampled; 1 or 0 greedy
    u: float | None = None  # the uniform draw (sampled); None when greedy
    p: float | None = None  # p_i(x) (sampled; the greedy rule needs only argmaxes)
    q: float | None = None  # q_i(x)


@dataclass
class Verdict:
    n_accepted: int  # j: d_1..d_j are kept
    next_token: int  # argmax / a sample of the residual ("corrected") or of p_{n+1} ("bonus")
    kind: str  # "corrected" or "bonus"
    decisions: list[Decision]  # length j, or j + 1 with the rejection last
    residual: np.ndarray | None = None  # (vocab,) norm(max(0, p - q)) after a sampled rejection


def accept_greedy(target_argmax: np.ndarray, drafts: list[int]) -> Verdict:
    """Temperature 0: keep d_i while it is the target's argmax; at the first miss emit the argmax.

    target_argmax: (n+1,) argmax p_i for every verified row. Output = plain greedy decoding's.
    """
    decisions = []
    for i, x in enumerate(drafts):
        best = int(target_argmax[i])
        decisions.append(
            Decision(i, x, best, accepted=x == best, accept_probability=float(x == best))
        )
        if x != best:
            return Verdict(i, best, "corrected", decisions)
    n = len(drafts)
    return Verdict(n, int(target_argmax[n]), "bonus", decisions)


def accept_or_reject(
    p: np.ndarray, q: np.ndarray, drafts: list[int], rng: np.random.Generator
) -> Verdict:
    """Leviathan et al. 2023, Algorithm 1, for n = len(drafts) drafted tokens (sampled).

    p: (n+1, vocab) target rows (an array, or `RowsOnDemand`: the rule reads only the rows up
    to its first rejection); q: (n, vocab) draft rows (one-hot for a drafter without them).
    For i = 1..n: draw u ~ U[0, 1); accept d_i if u < min(1, p_i(x) / q_i(x)); at the first
    rejection emit x ~ norm(max(0, p_i - q_i)) and stop. All accepted: emit x ~ p_{n+1}.
    """
    decisions = []
    for i, x in enumerate(drafts):
        u, a = float(rng.random()), acceptance_probability(p[i], q[i], x)
        accepted = u < a  # P(u < a) = a for u ~ U[0, 1)
        best = int(np.argmax(p[i]))
        decisions.append(Decision(i, x, best, accepted, a, u, float(p[i][x]), float(q[i][x])))
        if not accepted:
            residual = residual_distribution(p[i], q[i])
            return Verdict(i, sample(residual, rng), "corrected", decisions, residual)
    n = len(drafts)
    return Verdict(n, sample(p[n], rng), "bonus", decisions)


@dataclass
class RowsOnDemand:
    """The target's rows p_1..p_{n+1}, each shaped by `distribution` when first read.

    The rule stops at its first rejection, so the rows after it are never read (the trace reads
    them all): with a drafter that is often wrong, most rows of 262,144 are never computed.
    """

    logits: np.ndarray  # (n+1, vocab): the verify pass's rows
    sampling: SamplingParams

    def __post_init__(self) -> None:
        self.rows = np.empty(self.logits.shape)  # (n+1, vocab) float64, filled row by row
        self.ready = [False] * len(self.logits)

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> np.ndarray:
        if not self.ready[i]:
            distribution(self.logits[i], self.sampling, out=self.rows[i])
            self.ready[i] = True
        return self.rows[i]


# ------------------------------------------------------------------------------ the loop


@dataclass
class DecodeState:
    """Where decoding stands. Invariant: the cache holds tokens[:-1]; the newest is unread."""

    tokens: list[int]  # the prompt, then every emitted token
    n_prompt: int
    cache: KVCache
    hidden: np.ndarray  # (d_model,): the target's last block output that predicted tokens[-1]

    @property
    def new_ids(self) -> list[int]:
        return self.tokens[self.n_prompt :]


@dataclass
class StepResult:
    """Everything one draft-verify step did; `step_record` turns it into a trace record."""

    context_length: int  # len(tokens) before the step
    draft: Draft
    logits: np.ndarray  # (n+1, vocab): the target's verify rows
    p: RowsOnDemand | None  # (n+1, vocab) sampled; None greedy (the rule needs argmaxes only)
    q: np.ndarray | None  # (n, vocab) sampled; None greedy
    verdict: Verdict
    emitted: list[int]  # accepted drafts, then the corrected/bonus token (cut after an EOS)
    kv_before: int
    kv_after: int
    draft_s: float
    verify_s: float


def prefill(
    model: Model,
    prompt_ids: list[int],
    sampling: SamplingParams,
    rng: np.random.Generator,
    capacity: int,
) -> tuple[DecodeState, np.ndarray]:
    """Read the prompt, emit the first new token from the last row. Returns (state, logits)."""
    cache = new_cache(model.config, capacity=capacity)
    out = forward_hidden(model, prompt_ids, cache, last_only=True)
    logits = out.logits[-1]  # (vocab,)
    first = next_token(logits, sampling, rng)
    state = DecodeState(list(prompt_ids) + [first], len(prompt_ids), cache, out.hidden[-1])
    return state, logits


def verify(model: Model, cache: KVCache, newest: int, drafts: list[int]) -> ForwardOutput:
    """One target forward over [newest, d_1..d_n]: n+1 rows of logits; the cache grows n+1.

    The kernels are batch invariant, so every row is computed exactly as plain decoding would
    compute it (why greedy outputs match bit for bit).
    """
    return forward_hidden(model, [newest, *drafts], cache)


def speculative_step(
    model: Model,
    state: DecodeState,
    drafter: Drafter | None,
    k: int,
    sampling: SamplingParams,
    rng: np.random.Generator,
) -> StepResult:
    """Draft up to k tokens, verify them in one forward, keep the accepted ones (mutates state)."""
    vocab = model.config.vocab_size
    n_before, context_length = state.cache.length, len(state.tokens)

    t0 = time.perf_counter()
    draft = Draft([])
    if drafter is not None and k > 0:
        ctx = DraftContext(state.tokens, model, state.cache, state.hidden)
        draft = drafter.propose(ctx, k, sampling, rng)
        check_draft(draft, k, vocab, state.cache, n_before)
    t1 = time.perf_counter()

    out = verify(model, state.cache, state.tokens[-1], draft.tokens)
    if sampling.greedy:
        p = q = None
        verdict = accept_greedy(np.argmax(out.logits, axis=-1), draft.tokens)
    else:
        p = RowsOnDemand(out.logits, sampling)
        q = draft.q if draft.q is not None else one_hot(draft.tokens, vocab)  # (n, vocab)
        verdict = accept_or_reject(p, q, draft.tokens, rng)

    # Roll back: keep the newest token and the j accepted drafts; forget the rest.
    j = verdict.n_accepted
    state.cache.truncate(n_before + 1 + j)
    if drafter is not None:
        drafter.rollback(context_length + j)
    emitted = draft.tokens[:j] + [verdict.next_token]
    state.tokens.extend(emitted)
    state.hidden = out.hidden[j]
    t2 = time.perf_counter()
    return StepResult(
        context_length=context_length,
        draft=draft,
        logits=out.logits,
        p=p,
        q=q,
        verdict=verdict,
        emitted=emitted,
        kv_before=n_before,
        kv_after=state.cache.length,
        draft_s=t1 - t0,
        verify_s=t2 - t1,
    )


def check_draft(draft: Draft, k: int, vocab: int, cache: KVCache, length: int) -> None:
    """A drafter that breaks the protocol would silently corrupt the output: stop it loudly."""
    n = len(draft.tokens)
    if n > k:
        raise ValueError(f"the drafter proposed {n} tokens, more than k = {k}")
    if any(not 0 <= t < vocab for t in draft.tokens):
        raise ValueError(f"the drafter proposed a token outside the vocabulary [0, {vocab})")
    if draft.q is not None and draft.q.shape != (n, vocab):
        raise ValueError(f"the drafter's q has shape {draft.q.shape}, expected {(n, vocab)}")
    if cache.length != length:
        raise ValueError("the drafter changed the target cache's length and did not restore it")


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k (tokens drafted per step) must be in 1..{MAX_K}, got {k}")


def check_drafter(drafter: Drafter | None, model: Model) -> None:
    if drafter is None:
        return
    if drafter.vocab_size is not None and drafter.vocab_size != model.config.vocab_size:
        raise InputError(
            f"the drafter {drafter.name} has a vocabulary of {drafter.vocab_size} tokens, the "
            f"target {model.config.vocab_size}: speculative decoding needs the same vocabulary"
        )
    drafter.reset(model)


# --------------------------------------------------------------------- a step over a tree


@dataclass
class TreeStepResult:
    """Everything one tree step did; `tree_step_record` turns it into a trace record."""

    context_length: int  # len(tokens) before the step
    tree: TokenTree  # the drafted tree; node 0 = the newest token
    logits: np.ndarray  # (n+1, vocab): the target's row at every node
    p: RowsOnDemand | None  # (n+1, vocab) sampled; None greedy
    verdict: TreeVerdict
    emitted: list[int]  # the accepted path's tokens, then the corrected/bonus token
    kv_before: int
    kv_after: int
    draft_s: float
    verify_s: float


def verify_tree(model: Model, cache: KVCache, tree: TokenTree) -> ForwardOutput:
    """One target forward over every node of the tree: row i = the target after root -> i.

    The nodes go into the cache from row cache.length on, each attending to the prefix and its
    own ancestors (`tree.tree_mask`); the cache grows n+1 rows, which `tree.compact` cuts back
    to the accepted path.
    """
    return forward_hidden(model, tree.tokens, cache, tree=tree_mask(tree.parents, cache.length))


def tree_step(
    model: Model,
    state: DecodeState,
    drafter: Drafter | None,
    n_nodes: int,
    sampling: SamplingParams,
    rng: np.random.Generator,
) -> TreeStepResult:
    """Draft a tree of up to n_nodes, verify it in one forward, keep the accepted path.

    The speculative step with a tree for a chain (SpecInfer, Miao et al. 2024): the rule walks
    from the root (`accept_tree_greedy`, `accept_tree_sampled`), the accepted path's keys and
    values move next to the prefix (`compact`), the rest is forgotten. Mutates state.
    """
    n_before, context_length = state.cache.length, len(state.tokens)

    t0 = time.perf_counter()
    tree = chain([state.tokens[-1]])  # the root alone: a plain decoding step
    if drafter is not None and n_nodes > 0:
        ctx = DraftContext(state.tokens, model, state.cache, state.hidden)
        tree = drafter.propose_tree(ctx, n_nodes, sampling, rng)
        check_token_tree(tree, n_nodes, model.config.vocab_size, state, n_before, sampling)
    t1 = time.perf_counter()

    out = verify_tree(model, state.cache, tree)
    if sampling.greedy:
        p = None
        verdict = accept_tree_greedy(tree, np.argmax(out.logits, axis=-1))
    else:
        p = RowsOnDemand(out.logits, sampling)
        verdict = accept_tree_sampled(tree, p, rng)

    # Keep the newest token and the accepted path, next to the prefix; forget the rest.
    compact(state.cache, n_before, verdict.path)
    if drafter is not None:
        drafter.rollback(context_length + verdict.n_accepted)
    emitted = [tree.tokens[node] for node in verdict.path[1:]] + [verdict.next_token]
    state.tokens.extend(emitted)
    state.hidden = out.hidden[verdict.path[-1]]
    t2 = time.perf_counter()
    return TreeStepResult(
        context_length=context_length,
        tree=tree,
        logits=out.logits,
        p=p,
        verdict=verdict,
        emitted=emitted,
        kv_before=n_before,
        kv_after=state.cache.length,
        draft_s=t1 - t0,
        verify_s=t2 - t1,
    )


def check_token_tree(
    tree: TokenTree,
    n_nodes: int,
    vocab: int,
    state: DecodeState,
    length: int,
    sampling: SamplingParams,
) -> None:
    """A drafter's tree that breaks the protocol would silently corrupt the output: stop it."""
    check_tree(tree.tokens, tree.parents, tree.proposal)
    if tree.n_drafted > n_nodes:
        raise ValueError(f"the drafter proposed {tree.n_drafted} nodes, more than {n_nodes}")
    if tree.tokens[0] != state.tokens[-1]:
        raise ValueError("a token tree's root must be the newest token, ctx.tokens[-1]")
    if any(not 0 <= t < vocab for t in tree.tokens):
        raise ValueError(f"the drafter proposed a token outside the vocabulary [0, {vocab})")
    if tree.proposal == SAMPLED and not sampling.greedy:
        for node in set(tree.parents[1:]):
            if node not in tree.q or tree.q[node].shape != (vocab,):
                raise ValueError(f"sampled siblings of node {node} need their q, shape ({vocab},)")
    if state.cache.length != length:
        raise ValueError("the drafter changed the target cache's length and did not restore it")


def check_tree_budget(n_nodes: int) -> None:
    if not 1 <= n_nodes <= MAX_TREE_NODES:
        raise InputError(
            f"tree (nodes drafted per step) must be in 1..{MAX_TREE_NODES}, got {n_nodes}"
        )


def check_tree_drafter(drafter: Drafter | None) -> None:
    if drafter is not None and not callable(getattr(drafter, "propose_tree", None)):
        raise InputError(
            f"the drafter {drafter.name} cannot draft token trees (it has no propose_tree): "
            "draft a chain (no tree), or pick a drafter that proposes trees"
        )


# ----------------------------------------------------------------- the trace's records


def token_text(tokenizer: object | None, token: int) -> str | None:
    """What one token looks like on its own (None without a tokenizer)."""
    if tokenizer is None:
        return None
    return tokenizer.decode([int(token)], skip_special_tokens=False)


def top_entries(probs: np.ndarray | SoftmaxRow, tokenizer: object | None, n: int) -> list[dict]:
    """The n most likely tokens of a distribution: [{token, text, prob}], most likely first."""
    ids = probs.top(n) if isinstance(probs, SoftmaxRow) else top_n(probs, n)
    return [
        {"token": int(t), "text": token_text(tokenizer, t), "prob": float(probs[t])}
        for t in ids
        if probs[t] > 0
    ]


def first_token_record(
    tokenizer: object | None, token: int, p: np.ndarray | SoftmaxRow, top: int
) -> dict:
    return {
        "token": int(token),
        "text": token_text(tokenizer, token),
        "top_p": top_entries(p, tokenizer, top),
    }


@dataclass
class SoftmaxRows:
    """A greedy step's verify rows as its record shows p: softmax (`sampling.SoftmaxRow`),
    each made when first read (rows after the first rejection never are)."""

    logits: np.ndarray  # (n+1, vocab)

    def __post_init__(self) -> None:
        self.made: dict[int, SoftmaxRow] = {}

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> SoftmaxRow:
        if i not in self.made:
            self.made[i] = SoftmaxRow.of(self.logits[i])
        return self.made[i]


def shown_distributions(step: StepResult) -> tuple:
    """p (n+1 rows of vocab) and q (n rows) as the trace shows them, and whether q is real.

    Sampled: the distributions the rule used (p's rows shaped when read: `RowsOnDemand`).
    Greedy: softmax(logits), the rule needed none (`SoftmaxRow`, over the tokens the drafter's
    head scored for q). A drafter without probabilities (prompt lookup) shows one-hot q.
    """
    p = step.p if step.p is not None else SoftmaxRows(step.logits)
    q = step.q
    if q is None and step.draft.logit_rows is not None:
        q = [SoftmaxRow.of(row, step.draft.scored) for row in step.draft.logit_rows]
    elif q is None:  # one-hot: all of q_i on d_i (the record reads no other token's q)
        q = [{x: 1.0} for x in step.draft.tokens]
    has_q = step.draft.q is not None or step.draft.logit_rows is not None
    return p, q, has_q


def step_record(
    index: int, step: StepResult, tokenizer: object | None, top: int, sampling: SamplingParams
) -> dict:
    """One JSON-serialisable record of a draft-verify step: the fields of `STEP_FIELDS`.
    (sampling: as `tree_step_record` takes it; a chain's step carries what it needs.)"""
    v, drafts = step.verdict, step.draft.tokens
    p, q, has_q = shown_distributions(step)
    next_dist = v.residual if v.residual is not None else p[v.n_accepted]

    def decision(d: Decision) -> dict:
        p_x = d.p if d.p is not None else float(p[d.position][d.token])
        q_x = d.q if d.q is not None else float(q[d.position][d.token])
        return {
            "position": d.position,
            "token": d.token,
            "text": token_text(tokenizer, d.token),
            "p": p_x,
            "q": q_x,
            "ratio": p_x / q_x if q_x > 0 else None,
            "u": d.u,
            "accept_probability": d.accept_probability,
            "target_argmax": d.target_argmax,
            "accepted": bool(d.accepted),
        }

    return {
        "step": index,
        "context_length": step.context_length,
        "kv_length_before": step.kv_before,
        "drafted": [
            {
                "position": i,
                "token": int(x),
                "text": token_text(tokenizer, x),
                "q": float(q[i][x]),
                "top_q": top_entries(q[i], tokenizer, top) if has_q else [],
            }
            for i, x in enumerate(drafts)
        ],
        "target": [  # rows after the one that gave next_token were never read: left empty
            {"position": i, "top_p": top_entries(p[i], tokenizer, top) if i <= v.n_accepted else []}
            for i in range(len(drafts) + 1)
        ],
        "decisions": [decision(d) for d in v.decisions],
        "accepted": v.n_accepted,
        "next_token": {
            "token": int(v.next_token),
            "text": token_text(tokenizer, v.next_token),
            "kind": v.kind,
            "prob": float(next_dist[v.next_token]),
        },
        "residual_top": top_entries(v.residual, tokenizer, top) if v.residual is not None else None,
        "emitted": [int(t) for t in step.emitted],
        "emitted_text": tokenizer.decode(step.emitted, skip_special_tokens=False)
        if tokenizer is not None
        else None,
        "kv_length_after": step.kv_after,
        "verify_forwards": 1,  # always 1, see STEP_FIELDS
        "draft_s": step.draft_s,
        "verify_s": step.verify_s,
    }


def tree_q_row(tree: TokenTree, node: int, sampling: SamplingParams) -> np.ndarray | None:
    """The drafter's distribution over node's children as the trace shows it; None: one-hot.

    Sampled: the q the siblings were drawn from (TOP siblings have none: the rule takes each
    one-hot). Greedy: softmax of the drafter's scores, when it gave them, for display.
    """
    if node in tree.q:
        return tree.q[node]
    if sampling.greedy and node in tree.logit_rows:
        return SoftmaxRow.of(tree.logit_rows[node])
    return None


def tree_step_record(
    index: int, step: TreeStepResult, tokenizer: object | None, top: int, sampling: SamplingParams
) -> dict:
    """A tree step's record: the chain's fields (`STEP_FIELDS`) along the accepted path, and the
    whole tree under "tree" (`trace.TREE_FIELDS`)."""
    tree, v = step.tree, step.verdict
    path, j = v.path, v.n_accepted
    p = step.p if step.p is not None else SoftmaxRows(step.logits)
    q_rows = {node: tree_q_row(tree, node, sampling) for node in set(tree.parents[1:])}
    node_depth = depths(tree.parents)
    children = {node: tree.children(node) for node in q_rows}

    def p_of(node: int) -> float:  # the target's probability of node at its parent's row
        return float(p[tree.parents[node]][tree.tokens[node]])

    def q_of(node: int) -> float | None:  # the node's q under its parent (None: none)
        row = q_rows[tree.parents[node]]
        return None if row is None else float(row[tree.tokens[node]])

    # The chain's view: the accepted path, then the first sibling rejected at its end.
    tried = [(path[d], v.siblings[path[d]].trials[-1]) for d in range(j)]  # (parent, trial)
    drafted = path[1:]  # nodes
    if v.kind == "corrected":
        tried.append((path[j], v.siblings[path[j]].trials[0]))
        drafted = [*drafted, children[path[j]][0]]

    def q_or_one_hot(node: int) -> float:
        q_x = q_of(node)
        return 1.0 if q_x is None else q_x

    def decision(i: int) -> dict:
        parent, trial = tried[i]
        node = drafted[i]
        p_x = trial.p if trial.p is not None else p_of(node)
        q_x = trial.q if trial.q is not None else q_or_one_hot(node)
        return {
            "position": i,
            "token": trial.token,
            "text": token_text(tokenizer, trial.token),
            "p": p_x,
            "q": q_x,
            "ratio": p_x / q_x if q_x > 0 else None,
            "u": trial.u,
            "accept_probability": trial.accept_probability,
            "target_argmax": int(np.argmax(step.logits[parent])),
            "accepted": bool(trial.accepted),
        }

    next_dist = v.residual if v.residual is not None else p[path[-1]]
    record = {
        "step": index,
        "context_length": step.context_length,
        "kv_length_before": step.kv_before,
        "drafted": [
            {
                "position": i,
                "token": tree.tokens[node],
                "text": token_text(tokenizer, tree.tokens[node]),
                "q": q_or_one_hot(node),
                "top_q": top_entries(q_rows[tree.parents[node]], tokenizer, top)
                if q_rows[tree.parents[node]] is not None
                else [],
            }
            for i, node in enumerate(drafted)
        ],
        "target": [
            {"position": i, "top_p": top_entries(p[path[i]], tokenizer, top) if i <= j else []}
            for i in range(len(drafted) + 1)
        ],
        "decisions": [decision(i) for i in range(len(tried))],
        "accepted": j,
        "next_token": {
            "token": int(v.next_token),
            "text": token_text(tokenizer, v.next_token),
            "kind": v.kind,
            "prob": float(next_dist[v.next_token]),
        },
        "residual_top": top_entries(v.residual, tokenizer, top) if v.residual is not None else None,
        "emitted": [int(t) for t in step.emitted],
        "emitted_text": tokenizer.decode(step.emitted, skip_special_tokens=False)
        if tokenizer is not None
        else None,
        "kv_length_after": step.kv_after,
        "verify_forwards": 1,
        "draft_s": step.draft_s,
        "verify_s": step.verify_s,
    }

    def verdict_of(node: int) -> str:
        if node in path:
            return "accepted"
        parent = tree.parents[node]
        n_tried = len(v.siblings[parent].trials) if parent in v.siblings else 0
        return "rejected" if children[parent].index(node) < n_tried else "untried"

    def trial_record(node: int, trial: Trial) -> dict:
        shown_residual = trial.residual is not None and not trial.accepted
        return {
            "node": node,
            "token": trial.token,
            "p": trial.p if trial.p is not None else p_of(node),
            "q": trial.q if trial.q is not None else q_of(node),
            "accept_probability": trial.accept_probability,
            "u": trial.u,
            "accepted": bool(trial.accepted),
            "residual_top": top_entries(trial.residual, tokenizer, top) if shown_residual else None,
        }

    record["tree"] = {
        "proposal": tree.proposal,
        "nodes": [
            {
                "node": node,
                "token": int(token),
                "text": token_text(tokenizer, token),
                "parent": tree.parents[node],
                "depth": int(node_depth[node]),
                "q": q_of(node) if node > 0 else None,
                "p": p_of(node) if node > 0 else None,
                "verdict": verdict_of(node),
            }
            for node, token in enumerate(tree.tokens)
        ],
        "mask": ancestor_mask(tree.parents).astype(int).tolist(),
        "path": list(path),
        "siblings": [
            {
                "node": parent,
                "trials": [
                    trial_record(children[parent][i], trial)
                    for i, trial in enumerate(verdict.trials)
                ],
            }
            for parent, verdict in v.siblings.items()
        ],
        "kv": {
            "before": step.kv_before,
            "written": len(tree.tokens),
            "after": step.kv_after,
            "moved": [
                [step.kv_before + node, step.kv_before + d]
                for d, node in enumerate(path)
                if node != d
            ],
        },
    }
    return record


@dataclass(kw_only=True)
class SpeculativeGeneration(Generation):
    """A `Generation` (ids, text, timings) plus the numbers and the step-by-step trace."""

    stats: Stats
    trace: Trace | None


def speculative_generate(
    model: Model,
    prompt_ids: list[int],
    drafter: Drafter | None,
    k: int = 4,
    max_new_tokens: int = 32,
    sampling: SamplingParams = GREEDY,
    seed: int = 0,
    *,
    on_token: Callable[[int], None] | None = None,
    stop_at_eos: bool = True,
    trace: bool = True,
    trace_top: int = 5,
    tree: int | None = None,
) -> SpeculativeGeneration:
    """Decode like `generate`, up to k drafted tokens per target forward.

    drafter: any `Drafter` (see `drafters.make_drafter`), or None to draft nothing (plain
    decoding through this loop). k: 1..16. sampling: temperature, top-k and top-p, as for
    `generate` (the default is greedy); they shape the target's p and the draft's q alike.
    Greedy output equals `generate`'s token for token; sampled output has the same distribution.
    on_token is called with each new token as it is accepted; stop_at_eos stops after <eos>.
    trace=False skips the per-step records (they cost a softmax over the vocabulary per row);
    trace_top is how many alternatives the records list for each distribution.
    tree: None drafts a chain of up to k tokens per step; N (1..64) asks the drafter for a token
    tree of up to N nodes instead (its `propose_tree`), verified in one forward and walked by
    `tree.accept_tree_greedy` / `tree.accept_tree_sampled` (k is then unused): the same output
    law, more tokens accepted per forward when the drafter's first guess is often wrong.
    """
    check_prompt(prompt_ids, model.config.vocab_size)
    check_max_new_tokens(max_new_tokens)
    check_k(k)
    if tree is not None:
        check_tree_budget(tree)
        check_tree_drafter(drafter)
    check_drafter(drafter, model)
    rng = np.random.default_rng(seed)
    eos = model.config.eos_token_id if stop_at_eos else None
    width = k if tree is None else tree  # the most tokens one step drafts
    stats = Stats(k=width)
    record = Trace.begin(model, drafter, width, sampling, seed, prompt_ids, tree) if trace else None

    t0 = time.perf_counter()
    capacity = len(prompt_ids) + max_new_tokens + width + 1  # a step writes up to width + 1 rows
    state, logits = prefill(model, prompt_ids, sampling, rng, capacity)
    stats.prefill_s = time.perf_counter() - t0
    first = state.tokens[-1]
    if record is not None:
        p = shown(logits, sampling)
        record.first_token = first_token_record(model.tokenizer, first, p, trace_top)
    if on_token is not None:
        on_token(first)

    t0 = time.perf_counter()
    while first != eos and len(state.new_ids) < max_new_tokens:
        room = max_new_tokens - len(state.new_ids)  # a step emits up to n + 1 tokens
        if tree is None:
            step = speculative_step(model, state, drafter, min(k, room - 1), sampling, rng)
            decisions = [d.accepted for d in step.verdict.decisions]
            n_drafted, depth = len(step.draft.tokens), None
            write_record = step_record
        else:  # a path of n nodes emits n + 1 tokens: at most room - 1 nodes, so never more
            step = tree_step(model, state, drafter, min(tree, room - 1), sampling, rng)
            decisions, n_drafted = step.verdict.decisions, step.tree.n_drafted
            depth = int(depths(step.tree.parents).max())
            write_record = tree_step_record
        if eos in step.emitted:  # stop at the first end-of-sequence token
            cut = step.emitted.index(eos) + 1
            del state.tokens[len(state.tokens) - len(step.emitted) + cut :]
            step.emitted = step.emitted[:cut]
        n_emitted = len(step.emitted)
        stats.add_step(n_drafted, decisions, n_emitted, step.draft_s, step.verify_s, depth)
        if record is not None:
            t_record = time.perf_counter()
            record.steps.append(
                write_record(stats.steps - 1, step, model.tokenizer, trace_top, sampling)
            )
            stats.trace_s += time.perf_counter() - t_record
        if on_token is not None:
            for t in step.emitted:
                on_token(t)
        if eos in step.emitted:
            break
    stats.decode_s = time.perf_counter() - t0

    ids = state.new_ids
    stats.new_tokens = len(ids)
    stopped_by = "eos" if ids[-1] == eos else "max_new_tokens"
    text = decode_text(model, ids)
    if record is not None:
        record.finish(ids, text, stopped_by, stats)
    return SpeculativeGeneration(
        prompt_ids=list(prompt_ids),
        ids=ids,
        text=text,
        prefill_s=stats.prefill_s,
        decode_s=stats.decode_s,
        stopped_by=stopped_by,
        stats=stats,
        trace=record,
    )
