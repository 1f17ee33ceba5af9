"""The roofline of decoding: what a forward pass must read, and how fast this machine reads.

Decoding one token reads every weight once: about 1 GB in float32 for Gemma 3 270M. On a CPU
that takes far longer than the arithmetic (a memory-bound step), so

    bound_tokens_per_s = bandwidth / bytes_per_token

is the ceiling of plain decoding, and a forward pass over T = 1..16 positions should cost about
what T = 1 costs: the weights are read once either way, and only the arithmetic grows with T,
until it catches up with the reading (the "ridge" of Williams et al. 2009's roofline model).
That is why verifying k drafted tokens in one pass costs about as much as decoding one.

These functions measure each part; `minispec bench` prints them, the app and the lessons plot
them. Timing claims live in the bench and docs/benchmarks.md, never in tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from minispec.generate import generate
from minispec.kv_cache import new_cache
from minispec.model import Model, forward

T_VALUES = (1, 2, 4, 5, 8, 16)  # 5 = verifying k = 4 drafts


def forward_times(
    model: Model, context: int = 256, t_values: tuple[int, ...] = T_VALUES, repeats: int = 5
) -> dict[int, dict[str, float]]:
    """Milliseconds for one forward of T new tokens after `context` tokens: {T: {min, median}}.

    Each round times every T once, so a machine that speeds up or slows down during the
    measurement moves all T alike instead of skewing their ratios; the first round warms the
    caches (and compiles) and is not counted.
    """
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    cache = new_cache(model.config, context + max(t_values))
    forward(model, rng.integers(4, vocab, context), cache, last_only=True)
    tokens = {T: rng.integers(4, vocab, T) for T in t_values}
    runs: dict[int, list[float]] = {T: [] for T in t_values}
    for _ in range(repeats + 1):
        for T in t_values:
            t0 = time.perf_counter()
            forward(model, tokens[T], cache)
            runs[T].append(1000 * (time.perf_counter() - t0))
            cache.truncate(context)
    return {T: {"min": min(r[1:]), "median": statistics.median(r[1:])} for T, r in runs.items()}


PREFILL_LENGTHS = (32, 256, 512)  # a short prompt, a typical one, one a sliding window long


def prefill_tokens_per_s(
    model: Model, lengths: tuple[int, ...] = PREFILL_LENGTHS, repeats: int = 3
) -> dict[int, float]:
    """Prompt tokens per second of a prefill (one forward of the whole prompt, the head on the
    last row only, as `generate` does), the best of `repeats` rounds: {length: tokens/s}.

    Each round times every length once, into a fresh cache, after an untimed warm-up round.
    """
    rng = np.random.default_rng(0)
    prompts = {n: rng.integers(4, model.config.vocab_size, n) for n in lengths}
    best = {n: float("inf") for n in lengths}
    for round_ in range(repeats + 1):
        for n, ids in prompts.items():
            cache = new_cache(model.config, n)
            seconds = _timed(lambda ids=ids, c=cache: forward(model, ids, c, last_only=True))
            if round_:
                best[n] = min(best[n], seconds)
    return {n: n / best[n] for n in lengths}


def decode_tokens_per_s(model: Model, prompt_ids: list[int], n_tokens: int = 48) -> float:
    """Plain greedy decoding speed (prefill excluded), EOS ignored so every run is n_tokens."""
    return generate(model, prompt_ids, n_tokens, stop_at_eos=False).tokens_per_s


@njit(parallel=True, fastmath=True, cache=True)
def _stream_sum(a: np.ndarray) -> float:
    total = 0.0
    for i in prange(a.size):
        total += a[i]
    return total


def memory_bandwidth_gb_s(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Read a large array once per run, on all threads; the best run's GB/s (10^9 bytes/s)."""
    a = np.ones(n_bytes // 4, np.float32)
    _stream_sum(a[:1024])  # compile
    best = min(_timed(lambda: _stream_sum(a)) for _ in range(repeats))
    return n_bytes / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bytes_per_token(model: Model) -> int:
    """Weight bytes one decoding step reads: every matrix once, the tied head included.

    The embedding lookup reads only a row, so the (vocab, d_model) matrix counts once, as the head.
    """

    p = model.params
    total = p.embed.nbytes + p.final_norm.nbytes
    for layer in p.layers:
        total += sum(w.nbytes for w in vars(layer).values())
    return total
