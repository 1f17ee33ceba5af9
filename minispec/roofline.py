"""The roofline of decoding: what a forward pass must read, and how fast this machine reads.

Decoding one token reads every weight once: about 1 GB in float32 for Gemma 3 270M. On a CPU
that takes far longer than the arithmetic (a memory-bound step), so

    bound_tokens_per_s = bandwidth / weight_bytes

is the ceiling of plain decoding, and a forward pass over T = 1..16 positions should cost about
what T = 1 costs: the weights are read once either way, and only the arithmetic grows with T,
until it catches up with the reading (the "ridge" of Williams et al. 2009's roofline model).
That is why verifying k drafted tokens in one pass costs about as much as decoding one.
The other roof is the arithmetic: T tokens need T x fmas_per_token multiply-adds, at the rate
the kernel's tile reaches on weights already in cache (`fma_rate`), so

    compute_bound_ms(T) = T * fmas_per_token / fma_rate(T)

and a forward pass costs at least the larger of the two. Int8 weights shrink the reading by
4x but not the arithmetic (each weight is still one float32 multiply-add per row, after a
conversion), so they reach the ridge at a smaller T than float32.

These functions measure each part; `minispec bench` prints them, the app and the lessons plot
them. Timing claims live in the bench and docs/benchmarks.md, never in tests.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from minispec import kernels
from minispec.errors import InputError
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


def memory_bandwidth_gb_s(
    n_bytes: int = 1 << 30, repeats: int = 5, weights: str = "float32"
) -> float:
    """How fast decoding's own read streams n_bytes: the best of `repeats` one-row products
    (`kernels.linear`, T = 1) with a packed weight of n_bytes, in GB/s (10^9 bytes/s).

    Why this probe: "share of the bound" = tokens/s / (bandwidth / weight_bytes) must not
    exceed 100 %, so the probe must read at least as fast as a decoding step can. A plain
    parallel sum over a 1 GiB array read slower than the kernel streams the output head (it
    walks one stream per thread without software prefetch; the tile walks two panels with
    prefetch), so decoding measured above "its bound". Here the reader is the kernel itself.
    Why this size: pass `weight_bytes(model)` (what `minispec bench` does) and the probe's
    working set is exactly one step's: where a cache holds that many bytes (a guest that
    reports a 480 MiB L3 would hold an int8 model's 268 MB) decoding is served from it too,
    and the probe sees the same speed, not a DRAM figure that decoding beats. One product
    over all the bytes, without the ~130 calls and the work between them of a real step, is
    the fastest that read can be; a step can only be slower.
    """
    if weights not in ("float32", "int8"):
        raise InputError(f"weights must be 'float32' or 'int8', not {weights!r}")
    d_in = 640
    itemsize = 4 if weights == "float32" else 1
    n_panels = max(2, n_bytes // (d_in * kernels.PANEL * itemsize) // 2 * 2)
    d_out = n_panels * kernels.PANEL
    # ones, not zeros: np.zeros maps untouched pages to one shared zero page that stays in cache
    panels = np.ones((n_panels, d_in, kernels.PANEL), np.float32 if itemsize == 4 else np.int8)
    scale = None if itemsize == 4 else np.ones(d_out, np.float32)
    w = kernels.PackedWeight(panels, scale, d_out)
    x = np.ones((1, d_in), np.float32)
    kernels.linear(x, w)  # compiles, faults the output's pages in
    best = min(_timed(lambda: kernels.linear(x, w)) for _ in range(repeats))
    return w.nbytes / best / 1e9


def fma_rate(
    weights: str = "float32",
    t_values: tuple[int, ...] = T_VALUES,
    repeats: int = 20,
    packed: bool = True,
) -> dict[int, float]:
    """Multiply-adds per second of the kernel's product with T rows, on a weight in cache:
    {T: FMA/s}, the best of `repeats` calls each (packed=False: NumPy's BLAS on the float32
    matrix, for int8 the dequantized one, as `model.reference` multiplies).

    The weight is 512 x 2048 (4 MB in float32, 1 MB in int8): it stays in this machine's L3
    (or its L2s), so the product waits on the arithmetic, not on memory, and one call is long
    enough (about 1M FMAs per row) that its own overhead does not count.
    """
    if weights not in ("float32", "int8"):
        raise InputError(f"weights must be 'float32' or 'int8', not {weights!r}")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((512, 2048), dtype=np.float32)
    if not packed:
        weight = w if weights == "float32" else kernels.unpack(kernels.quantize_int8(w))
    else:
        weight = kernels.pack(w) if weights == "float32" else kernels.quantize_int8(w)
    rates = {}
    for T in t_values:
        x = rng.standard_normal((T, 2048), dtype=np.float32)
        kernels.linear(x, weight)  # compiles, warms the caches
        best = min(_timed(lambda x=x: kernels.linear(x, weight)) for _ in range(repeats))
        rates[T] = T * w.size / best
    return rates


def fmas_per_token(model: Model) -> int:
    """Multiply-adds one token costs in the weight products: one per weight (the head included).

    Attention's own products (2 x context x n_heads x head_dim per layer, about 3 % of this
    at a 256-token context for Gemma 3 270M) are left out.
    """
    p = model.params
    total = p.embed.shape[0] * p.embed.shape[1]
    for layer in p.layers:
        total += sum(w.shape[0] * w.shape[1] for w in vars(layer).values() if len(w.shape) == 2)
    return total


def machine_load() -> tuple[float, int]:
    """(the 1-minute load average, the CPU threads visible): how busy the machine was.

    A load near the thread count means other programs shared the cores while we timed."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return load, os.cpu_count() or 1


def timing_doubts(
    t1_ms: float, bound_ms: float, step_ms: float | None = None, load: tuple | None = None
) -> list[str]:
    """Plain-word reasons not to trust a roofline measurement; [] when there are none.

    t1_ms: one forward of one token; bound_ms: the memory bound of that pass; step_ms: one
    whole decoding step, measured separately (it includes the T = 1 pass, so it cannot be
    shorter, up to what its own context saves); load: `machine_load()`.
    """
    doubts = []
    if load is not None and load[0] > 0.75 * load[1]:
        doubts.append(
            f"the machine was busy: load average {load[0]:.1f} on {load[1]} CPU threads, so "
            "other programs shared the cores while we timed"
        )
    if t1_ms > 3 * bound_ms:
        doubts.append(
            f"a one-token pass took {t1_ms / bound_ms:.1f}x the memory bound: reading the "
            "weights should dominate it, so something else slowed it down"
        )
    # A step includes a one-token pass; its shorter context may save a little, never a quarter.
    if step_ms is not None and t1_ms > 1.25 * step_ms:
        doubts.append(
            f"a one-token pass ({t1_ms:.1f} ms) took far longer than a whole decoding step "
            f"({step_ms:.1f} ms), which includes one: the two were timed under different loads"
        )
    return doubts


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes(model: Model) -> int:
    """Weight bytes one decoding step reads: every matrix once, the tied head included.

    Weights only: the step also reads its KV cache (lesson 2's `my_bytes_per_token` adds it),
    a few MB at a few hundred positions against about 1 GB of float32 weights.

    The embedding lookup reads only a row, so the (vocab, d_model) matrix counts once, as the head.
    """

    p = model.params
    total = p.embed.nbytes + p.final_norm.nbytes
    for layer in p.layers:
        total += sum(w.nbytes for w in vars(layer).values())
    return total
