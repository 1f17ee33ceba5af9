"""Lesson 5's checks (lessons/05_drafters_and_speedup.ipynb): the MTP drafter's attention, tau
and the fastest k."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minispec.drafters.mtp import (
    config_for,
    init_params,
    queries,
    query_only_attention,
    visible,
)
from minispec.exercises.judging import (
    Case,
    Wrong,
    array_reader,
    attempt,
    close,
    judge,
    largest_difference,
    name_of,
    number,
    number_reader,
    report,
    same_array,
    same_number,
    same_value,
)
from minispec.kv_cache import new_cache
from minispec.model import attend_rows, forward
from minispec.stats import expected_tokens_per_forward
from minispec.tiny import tiny_model

# ---------------------------------------------------------------- the MTP drafter's attention


def check_query_only_attention(fn: Callable) -> None:
    """fn(q, keys, values, position, cached, window, scale): the drafter's attention, (H, hd).

    out_h = sum_s softmax_s(scale q_h . K[s, g(h)]) V[s, g(h)] over the visible keys
    start <= s < min(position + 1, cached), start = position - window + 1 on a sliding layer
    (else 0); g(h) = h // (n_heads / n_kv_heads), the key/value head of query head h's group.
    """
    report(fn, grade_query_only_attention)


@dataclass
class AttentionInput:
    """One case: a query, layer L's whole cache buffer, and where the drafter reads it."""

    name: str
    q: np.ndarray  # (n_heads, head_dim): normalised and rotated, not scaled
    keys: np.ndarray  # (capacity, n_kv_heads, head_dim); rows >= cached: a rejected draft's
    values: np.ndarray
    position: int  # the query's position t
    cached: int  # keys 0..cached-1 belong to the text
    window: int | None  # the layer's sliding window, None on a global layer
    scale: float  # query_pre_attn_scalar ** -0.5
    o_proj: np.ndarray | None = None  # the drafter's W_o, where the drafter itself drafts here
    drafted: np.ndarray | None = None  # (1, d): its query_only_attention on the same query

    def args(self) -> tuple:
        """Fresh copies: a function that scales q in place must not change the next call."""
        arrays = (self.q.copy(), self.keys.copy(), self.values.copy())
        return (*arrays, self.position, self.cached, self.window, self.scale)

    def bounds(self) -> tuple[int, int]:
        start, stop = visible(np.array([self.position]), self.cached, self.window)[0]
        return int(start), int(stop)


def target_attention(case: AttentionInput) -> np.ndarray:
    """The target's own attention (`model.attend_rows`) of the scaled query over what it sees."""
    bounds = np.array([case.bounds()])
    return attend_rows((case.q * np.float32(case.scale))[None], case.keys, case.values, bounds)[0]


def attention_inputs() -> list[AttentionInput]:
    """Queries of small drafters for a tiny target, over its real cache: a rolled-back draft
    left keys in rows 12..15 of the buffer. Plus Gemma 3 270M's grouping: 4 heads on 1."""
    target = tiny_model(seed=3)
    c = target.config
    rng = np.random.default_rng(5)
    cache = new_cache(c, 16)
    forward(target, rng.integers(4, c.vocab_size, 16), cache)
    inputs = []
    for name, layer, cached, position in [
        ("a draft query at position 9 on the global layer, keys 0..7 cached", 5, 8, 9),
        ("the target's own query at position 3, keys 0..11 cached", 5, 12, 3),
        (
            "a draft query at position 13 on a sliding layer (window 8), keys 0..11 cached",
            0,
            12,
            13,
        ),
    ]:
        cfg = config_for(target, width=24, d_ff=32, head_size=16, kv_layer=layer)
        p = init_params(cfg, target, np.arange(16), np.ones(c.hidden_size), seed=layer)
        z = 3 * rng.standard_normal((1, cfg.width)).astype(np.float32)
        pos = np.array([position])
        keys, values = cache.keys[layer], cache.values[layer]
        case = AttentionInput(
            name,
            queries(p, cfg, z, pos)[0],
            keys,
            values,
            position,
            cached,
            cfg.window,
            cfg.query_scale,
        )
        if position >= cached:  # where the drafter drafts: its own function, on what is cached
            bounds = visible(pos, cached, cfg.window)
            case.o_proj = p.o_proj
            case.drafted = query_only_attention(
                p, cfg, z, keys[:cached], values[:cached], pos, bounds
            )
        inputs.append(case)
    q = 2 * rng.standard_normal((4, 8)).astype(np.float32)
    kv = rng.standard_normal((2, 10, 1, 8)).astype(np.float32)
    name = "4 query heads on 1 key/value head (Gemma 3 270M's grouping), a draft at position 10"
    inputs.append(AttentionInput(name, q, kv[0], kv[1], 10, 10, None, 8**-0.5))
    return inputs


def attention_variant(
    case: AttentionInput,
    start: int,
    stop: int,
    scale: float,
    interleaved: bool = False,
    softmax_axis: int = -1,
    zero_scores: bool = False,
) -> np.ndarray:
    """The attention of case's query over keys start..stop-1, or a mistake (the flags):
    interleaved, head h reads key/value head h % n_kv; softmax_axis 0, over the query heads;
    zero_scores, every row of the buffer scored, the hidden ones with 0 instead of left out."""
    q, keys, values = case.q.astype(np.float64), case.keys, case.values
    n_heads, n_kv = q.shape[0], keys.shape[1]
    kv = np.arange(n_heads) % n_kv if interleaved else np.arange(n_heads) // (n_heads // n_kv)
    rows = np.arange(len(keys)) if zero_scores else np.arange(start, stop)
    k, v = keys[rows][:, kv].astype(np.float64), values[rows][:, kv].astype(np.float64)
    scores = np.einsum("hd,shd->hs", q * scale, k)  # (n_heads, rows)
    if zero_scores:
        scores[:, (rows < start) | (rows >= stop)] = 0.0
    e = np.exp(scores - scores.max(axis=softmax_axis, keepdims=True))
    return np.einsum("hs,shd->hd", e / e.sum(axis=softmax_axis, keepdims=True), v)


NO_SCALE = (
    "scale the scores: softmax(scale q . k), scale = query_pre_attn_scalar^-0.5, the target's "
    "own; without it the softmax is far too sharp"
)
PAST_CACHE = (
    "only rows 0..cached-1 of the buffer hold keys of this text; the rows after them are a "
    "rejected draft's leftovers (a rollback only moves the cache's length): stop at cached"
)
BUFFER = (
    "attend only to the keys the query may see, rows start..min(t + 1, cached) - 1 of the "
    "buffer (`drafters.mtp.visible`): the rest are future positions or a rejected draft's keys"
)
CAUSAL = (
    "a query at position t sees keys 0..t only (causal), not every cached key: "
    "stop = min(t + 1, cached)"
)
OWN_KEY = "the query sees its own position too: keys s <= t, so stop = min(t + 1, cached), not t"
WINDOW = (
    "on a sliding layer the query sees only the last `window` positions: start = t - window + 1 "
    "(`model.key_bounds`)"
)
WINDOW_OFF = "the window holds `window` positions, t itself included: start = t - window + 1"
GROUPS = (
    "query heads share key/value heads in blocks: with g = n_heads / n_kv_heads, heads 0..g-1 "
    "read key/value head 0, the next g head 1 (h // g, not h % n_kv_heads)"
)
AXIS = (
    "the softmax runs over the keys (the last axis of the (heads, keys) scores): each head's "
    "weights sum to 1 over the positions it reads"
)
ZERO_SCORE = (
    "a key the query may not see must get weight 0: leave it out (or score it -inf), not a "
    "score of 0, whose exp is 1"
)


def attention_mistakes(case: AttentionInput) -> dict[str, np.ndarray]:
    """What each mistake returns on case (the right answer where the mistake changes nothing)."""
    start, stop = case.bounds()
    t, n, w = case.position, case.cached, case.window

    def variant(start: int = start, stop: int = stop, scale: float = case.scale, **flags):
        return attention_variant(case, start, stop, scale, **flags)

    return {
        NO_SCALE: variant(scale=1.0),
        PAST_CACHE: variant(stop=min(t + 1, len(case.keys))),
        BUFFER: variant(start=0, stop=len(case.keys)),
        CAUSAL: variant(stop=n),
        OWN_KEY: variant(stop=min(t, n)),
        WINDOW: variant(start=0),
        WINDOW_OFF: variant(start=max(0, t - w)) if w else variant(),
        GROUPS: variant(interleaved=True),
        AXIS: variant(softmax_axis=0),
        ZERO_SCORE: variant(zero_scores=True),
    }


def grade_query_only_attention(fn: Callable) -> str:
    inputs = attention_inputs()
    cases = [Case(i.name, i.args(), target_attention(i), attention_mistakes(i)) for i in inputs]
    judge(fn, cases, array_reader(fn), same_array, largest_difference)
    drafting = [i for i in inputs if i.drafted is not None]
    for i in drafting:  # through W_o, the drafter's own output (the same numbers, checked twice)
        got = np.asarray(attempt(fn, *i.args(), case=i.name), np.float64)
        if not close(got.reshape(1, -1) @ i.o_proj.T, i.drafted):
            raise Wrong(f"through W_o it is not the drafter's query_only_attention ({i.name})")
    return (
        f"{name_of(fn)} is the target's own attention (attend_rows) on {len(cases)} cases, and "
        f"through W_o the drafter's query_only_attention on the {len(drafting)} drafting ones"
    )


def check_expected_tau(fn: Callable) -> None:
    """fn(alpha, k) = expected tokens per target forward, (1 - alpha^(k+1)) / (1 - alpha)."""
    report(fn, grade_expected_tau)


AT_ONE = (
    "at alpha = 1 every draft is accepted: tau = k + 1, the formula's limit (the division by "
    "1 - alpha needs that case on its own)"
)


def grade_expected_tau(fn: Callable) -> str:
    cases = []
    for alpha, k in [(0.0, 4), (0.5, 1), (0.8, 4), (0.95, 8), (0.3, 16), (0.6, 3), (1.0, 4)]:
        want = expected_tokens_per_forward(alpha, k)
        mistakes = {
            "count the corrected or bonus token: each step emits one token more than it "
            "accepts, so tau = 1 + alpha + ... + alpha^k": want - 1,
            "the sum runs to alpha^k (k drafted tokens, plus the one the target always adds): "
            "(1 - alpha^(k+1)) / (1 - alpha)": k if alpha == 1 else (1 - alpha**k) / (1 - alpha),
            "draft i counts only if drafts 1..i-1 were accepted too, so its chance is alpha^i, "
            "not alpha: the sum is geometric, not 1 + k alpha": 1 + k * alpha,
        }
        cases.append(Case(f"alpha={alpha}, k={k}", (alpha, k), want, mistakes))

    def read(got: object, case: Case) -> float:
        try:
            return number(got, fn, case.name)
        except Wrong:
            if case.args[0] == 1.0:
                raise Wrong(AT_ONE) from None
            raise

    def show(case: Case, got: float) -> str:
        return f"{case.name}: expected {case.want:.4f}, got {got:.4f}"

    try:
        judge(fn, cases, read, same_number, show)
    except Wrong as wrong:
        if "ZeroDivisionError" in str(wrong):
            raise Wrong(AT_ONE) from None
        raise
    return f"{name_of(fn)} is (1 - alpha^(k+1)) / (1 - alpha), with k + 1 at alpha = 1"


def check_best_k(fn: Callable) -> None:
    """fn(alpha, draft_ms, forward_ms) = the k with the most tokens per second.

    forward_ms[T]: the target's time for one forward of T tokens; a step with k drafts costs
    k * draft_ms + forward_ms[k + 1] and emits (1 - alpha^(k+1)) / (1 - alpha) tokens on average.
    """
    report(fn, grade_best_k)


def step_speed(
    alpha: float, k: int, draft_ms: float, verify_ms: float, bonus: bool = True
) -> float:
    """Tokens per millisecond of a step with k drafts (without the bonus token: one fewer)."""
    tokens = expected_tokens_per_forward(alpha, k) - (0 if bonus else 1)
    return tokens / (k * draft_ms + verify_ms)


def fastest(ks: Sequence[int], speed_of: Callable[[int], float]) -> int:
    return max(ks, key=speed_of)  # max keeps the first, the smallest k, on a tie


def best_k(alpha: float, draft_ms: float, forward_ms: dict[int, float]) -> int:
    """argmax_k tau(alpha, k) / (k draft_ms + forward_ms[k + 1]), over every k whose verify
    time forward_ms[k + 1] is known: the package's answer to exercise 3."""
    ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]
    return fastest(ks, lambda k: step_speed(alpha, k, draft_ms, forward_ms[k + 1]))


def best_k_inputs() -> list[tuple[str, float, float, dict[int, float]]]:
    """(name, alpha, draft_ms, forward_ms): rising verify costs, cheap and dear drafts."""
    ts = range(1, 18)
    return [
        (
            "a cheap draft, verify cost rising 1.5 ms per row",
            0.8,
            0.5,
            {t: 40 + 1.5 * t for t in ts},
        ),
        (
            "a flat verify cost up to 8 rows, steep after",
            0.9,
            0.3,
            {t: 40 + 0.3 * t if t <= 8 else 42.4 + 12 * (t - 8) for t in ts},
        ),
        ("a dear draft (a tenth of a target forward)", 0.7, 4.0, {t: 40 + 1.0 * t for t in ts}),
        ("an almost free, almost perfect draft", 0.97, 0.05, {t: 40 + 2.5 * t for t in ts}),
        ("a poor draft", 0.3, 2.0, {t: 40 + 1.0 * t for t in ts}),
    ]


def best_k_answers(
    alpha: float, draft_ms: float, forward_ms: dict[int, float]
) -> tuple[int, dict[str, int]]:
    """The fastest k, and the k each common mistake picks instead."""
    ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]

    def best(verify_ms: Callable[[int], float], cost: float = draft_ms, bonus: bool = True) -> int:
        return fastest(ks, lambda k: step_speed(alpha, k, cost, verify_ms(k), bonus))

    mistakes = {
        "verifying k drafts is a forward over k + 1 tokens (the newest one and the drafts): "
        "forward_ms[k + 1]": best(lambda k: forward_ms.get(k, np.inf)),
        "drafting costs time too: k * draft_ms per step": best(
            lambda k: forward_ms[k + 1], cost=0.0
        ),
        "the verify pass grows with its rows: use forward_ms[k + 1], not forward_ms[1]": best(
            lambda k: forward_ms[1]
        ),
        "count the corrected or bonus token: a step emits (1 - alpha^(k+1)) / (1 - alpha)": best(
            lambda k: forward_ms[k + 1], bonus=False
        ),
        "more tokens per step is not more tokens per second: divide by the step's time": max(ks),
    }
    return best_k(alpha, draft_ms, forward_ms), mistakes


def grade_best_k(fn: Callable) -> str:
    cases = []
    for name, alpha, draft_ms, forward_ms in best_k_inputs():
        want, mistakes = best_k_answers(alpha, draft_ms, forward_ms)
        shown = f"alpha={alpha}, draft_ms={draft_ms}, {name}"
        cases.append(Case(shown, (alpha, draft_ms, dict(forward_ms)), want, mistakes))

    def show(case: Case, got: float) -> str:
        return f"{case.name}: expected k = {case.want}, got {got:g}"

    judge(fn, cases, number_reader(fn), same_value, show)
    return f"{name_of(fn)} finds the fastest k on {len(cases)} cost profiles"
