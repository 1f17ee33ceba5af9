"""Every compiled variant of the kernels, found from the tests that choose them, and `warmup`.

Numba compiles a kernel once per kind of argument (dtype, and whether an array is contiguous),
and the Python side of several kernels picks one of two compiled functions (one thread or the
pool) or lays an argument out one of two ways. Each such choice is one named test, beside the
kernel that makes it:

- `matmul.matmul_path(T, int8)`: which tile a product of T rows takes, per weight kind
  (float32 `pack`, int8 `quantize_int8`);
- `pointwise.on_the_pool(n)`: the norms and GeGLU on one thread or on the pool;
- `attention.attention_variant(T, n_heads, n_kv, head_dim)`: one thread or the pool, the values
  read in place or copied into panels, the head padded to whole tiles or not;
- `distribution.cut_kind(top_k, top_p, vocab)`: nothing cut, top-k, or top-p alone, for rows
  of float32 (the model's) and float64 (a test's) logits.

`all_variants()` asks each test about shapes of every size (powers of two and one past them),
so a new threshold, or a moved one (the tile is 16 columns wide with AVX2, 32 with AVX-512), finds
its variant without anyone restating it here; `warmup` makes one call per variant found.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import numpy as np

from minispec.kernels.attention import attend_each, attention_variant
from minispec.kernels.distribution import (
    cut_kind,
    distribution_row,
    log_partition,
    sample_row,
    top_n,
)
from minispec.kernels.matmul import linear, matmul_path
from minispec.kernels.packing import pack, quantize_int8
from minispec.kernels.pointwise import gelu_gate, on_the_pool, rms_norm_rows, rope_rows

# Sizes to ask the tests about: 1, 2, 3, 4, 5, 8, 9, 16, 17, ...: each power of two and the
# next integer, so a threshold at any power of two (or any multiple of the tile) is crossed.
SIZES = sorted({m for i in range(15) for m in (2**i, 2**i + 1)})
HEAD_DIMS = (8, 16, 24, 32, 64, 256)  # narrower and wider than either tile; Gemma's 256
N_HEADS, N_KV = 4, 1  # Gemma 3 270M's: 4 query heads share 1 key/value head
SETTINGS = [(k, p) for k in (0, 1, 8) for p in (0.9, 1.0)]  # (top_k, top_p) to ask cut_kind
WIDTH = 8  # the norms' and GeGLU's row width in the warm-up calls; only the size matters
VOCAB = 64  # the warm-up rows' length


def first_of_each(variant: Callable[..., Hashable], cases: Iterable[tuple]) -> dict:
    """{variant: the first case (a tuple of arguments) that takes it}, in the order met."""
    found: dict = {}
    for case in cases:
        found.setdefault(variant(*case), case)
    return found


def all_variants() -> dict[tuple, Callable[[], object]]:
    """{(kernel, variant): a call that compiles it}, every variant the tests can choose."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    calls: dict[tuple, Callable[[], object]] = {}
    w = rand(64, 8)
    for kind, make in (("float32", pack), ("int8", quantize_int8)):
        paths = first_of_each(
            lambda T, int8=kind == "int8": matmul_path(T, int8), [(T,) for T in SIZES]
        )
        packed = make(w)
        for path, (T,) in paths.items():
            x = rand(T, 8)
            calls["linear", kind, path] = lambda x=x, packed=packed: linear(x, packed)
    for pool, (n_rows,) in first_of_each(
        lambda n: on_the_pool(n * WIDTH), [(n,) for n in SIZES]
    ).items():
        x = rand(n_rows, WIDTH)
        calls["rms_norm_rows", pool] = lambda x=x: rms_norm_rows(x, w[0], 1e-6)
        calls["gelu_gate", pool] = lambda x=x: gelu_gate(x, x)
    calls["rope_rows", "float32"] = lambda: rope_rows(
        rand(3, 2, 8), rand(3, 4), rand(3, 4)
    )  # as `rope_angles`
    # Every head width, not only the first of each variant: whether the values' panels come out
    # contiguous (a single panel of 16 dimensions, one key/value head) is NumPy's call, and
    # Numba compiles a contiguous array and a strided one apart.
    for d in HEAD_DIMS:
        cases = [(T, N_HEADS, N_KV, d) for T in SIZES]
        for name, (T, n_heads, n_kv, head_dim) in first_of_each(attention_variant, cases).items():
            capacity = T + 8
            kv = rand(capacity, n_kv, head_dim)  # (capacity, n_kv_heads, head_dim)
            seen = np.stack([np.zeros(T, np.int64), np.arange(capacity - T, capacity) + 1], 1)
            q = rand(T, n_heads, head_dim)
            calls["attend_each", name, head_dim] = lambda q=q, kv=kv, seen=seen: attend_each(
                q, kv, kv, seen
            )
    for dtype in (np.float32, np.float64):  # the model's rows; a test's
        logits = rand(VOCAB).astype(dtype)
        for kind, (top_k, top_p, _) in first_of_each(
            cut_kind, [(k, p, VOCAB) for k, p in SETTINGS]
        ).items():
            calls["distribution_row", dtype.__name__, kind] = (
                lambda logits=logits, top_k=top_k, top_p=top_p: distribution_row(
                    logits, 0.7, top_k, top_p, np.empty(VOCAB)
                )
            )
        calls["top_n", dtype.__name__] = lambda logits=logits: top_n(logits, 5)
        calls["log_partition", dtype.__name__] = lambda logits=logits: log_partition(logits)
    probs = np.abs(rand(VOCAB)).astype(np.float64)  # `sample_row` takes float64 only
    calls["sample_row", "float64"] = lambda: sample_row(probs, 0.5)
    return calls


def warmup(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Compile (or load from Numba's on-disk cache) every kernel in each of its variants
    (`all_variants`).

    The calls use arrays laid out as the model lays out Gemma's, so that the first timed run
    measures the model, not the compiler. `load_model` calls it. progress("kernels compiled",
    done, total) is called after each call.
    """
    steps = list(all_variants().values())
    for done, step in enumerate(steps, start=1):
        step()
        if progress is not None:
            progress("kernels compiled", done, len(steps))
