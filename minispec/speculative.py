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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
from minispec.sampling import GREEDY, SamplingParams, distribution, sample, shown
from minispec.stats import Stats
from minispec.trace import Trace

# The most tokens drafted per step. Acceptance decays geometrically with k while the verify pass
# grows with its rows (`minispec bench` times T = 1..16): a larger k does not pay on a CPU.
MAX_K = 16


# ----------------------------------------------------------------------------- the rule


def acceptance_probability(p: np.ndarray, q: np.ndarray, x: int) -> float:
    """min(1, p(x) / q(x)): Leviathan et al. 2023, Algorithm 1 (Chen et al. write q/p)."""
    if q[x] <= 0.0:
        raise ValueError(f"the draft proposed token {x} but its q gives it probability 0")
    return min(1.0, float(p[x] / q[x]))


def residual_distribution(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p'(x) = norm(max(0, p(x) - q(x))): where to sample after a rejection (Leviathan, sec. 2.3).

    It is p's mass that q under-covers. Together with the acceptances it gives exactly p:
    P(emit x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) p'(x) = p(x).
    """
    residual = np.maximum(p - q, 0.0)  # (vocab,)
    total = residual.sum()
    # A rejection implies p(x) < q(x) somewhere, so total > 0; rounding can leave it ~0.
    return residual / total if total > 0 else p


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


# ----------------------------------------------------------------- the trace's records


def token_text(tokenizer: object | None, token: int) -> str | None:
    """What one token looks like on its own (None without a tokenizer)."""
    if tokenizer is None:
        return None
    return tokenizer.decode([int(token)], skip_special_tokens=False)


def top_entries(probs: np.ndarray, tokenizer: object | None, n: int) -> list[dict]:
    """The n most likely tokens of a distribution: [{token, text, prob}], most likely first."""
    return [
        {"token": int(t), "text": token_text(tokenizer, t), "prob": float(probs[t])}
        for t in top_n(probs, n)
        if probs[t] > 0
    ]


def first_token_record(tokenizer: object | None, token: int, p: np.ndarray, top: int) -> dict:
    return {
        "token": int(token),
        "text": token_text(tokenizer, token),
        "top_p": top_entries(p, tokenizer, top),
    }


def shown_distributions(step: StepResult, sampling: SamplingParams) -> tuple:
    """p (n+1 rows of vocab) and q (n rows) as the trace shows them, and whether q is real.

    Sampled: the distributions the rule used. Greedy: softmax(logits), the rule needed none.
    p's rows are shaped when read (`RowsOnDemand`).
    A drafter without probabilities (prompt lookup) shows one-hot q.
    """
    p = step.p if step.p is not None else RowsOnDemand(step.logits, shown(sampling))
    q = step.q
    if q is None and step.draft.logit_rows is not None:
        q = [distribution(row, shown(sampling)) for row in step.draft.logit_rows]
    elif q is None:
        q = one_hot(step.draft.tokens, step.logits.shape[-1])
    has_q = step.draft.q is not None or step.draft.logit_rows is not None
    return p, q, has_q


def step_record(
    index: int, step: StepResult, tokenizer: object | None, top: int, sampling: SamplingParams
) -> dict:
    """One JSON-serialisable record of a draft-verify step: the fields of `STEP_FIELDS`."""
    v, drafts = step.verdict, step.draft.tokens
    p, q, has_q = shown_distributions(step, sampling)
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
) -> SpeculativeGeneration:
    """Decode like `generate`, up to k drafted tokens per target forward.

    drafter: any `Drafter` (see `drafters.make_drafter`), or None to draft nothing (plain
    decoding through this loop). k: 1..16. sampling: temperature, top-k and top-p, as for
    `generate` (the default is greedy); they shape the target's p and the draft's q alike.
    Greedy output equals `generate`'s token for token; sampled output has the same distribution.
    on_token is called with each new token as it is accepted; stop_at_eos stops after <eos>.
    trace=False skips the per-step records (they cost a softmax over the vocabulary per row);
    trace_top is how many alternatives the records list for each distribution.
    """
    check_prompt(prompt_ids, model.config.vocab_size)
    check_max_new_tokens(max_new_tokens)
    check_k(k)
    check_drafter(drafter, model)
    rng = np.random.default_rng(seed)
    eos = model.config.eos_token_id if stop_at_eos else None
    stats = Stats(k=k)
    record = Trace.begin(model, drafter, k, sampling, seed, prompt_ids) if trace else None

    t0 = time.perf_counter()
    capacity = len(prompt_ids) + max_new_tokens + k + 1
    state, logits = prefill(model, prompt_ids, sampling, rng, capacity)
    stats.prefill_s = time.perf_counter() - t0
    first = state.tokens[-1]
    if record is not None:
        p = distribution(logits, shown(sampling))
        record.first_token = first_token_record(model.tokenizer, first, p, trace_top)
    if on_token is not None:
        on_token(first)

    t0 = time.perf_counter()
    while first != eos and len(state.new_ids) < max_new_tokens:
        room = max_new_tokens - len(state.new_ids)  # a step emits up to n + 1 tokens
        step = speculative_step(model, state, drafter, min(k, room - 1), sampling, rng)
        if eos in step.emitted:  # stop at the first end-of-sequence token
            cut = step.emitted.index(eos) + 1
            del state.tokens[len(state.tokens) - len(step.emitted) + cut :]
            step.emitted = step.emitted[:cut]
        accepted = [d.accepted for d in step.verdict.decisions]
        n_drafted, n_emitted = len(step.draft.tokens), len(step.emitted)
        stats.add_step(n_drafted, accepted, n_emitted, step.draft_s, step.verify_s)
        if record is not None:
            record.steps.append(
                step_record(stats.steps - 1, step, model.tokenizer, trace_top, sampling)
            )
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
