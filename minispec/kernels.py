"""Every product with a weight matrix, `y = x @ w.T`, for the few rows that decoding multiplies.

Why not just `x @ w.T`?
    BLAS is built for big square-ish GEMMs: it copies ("packs") blocks of both operands into
    cache-sized panels and runs a micro-kernel over them. For a skinny product (T = 1..16 rows
    against the 262,144 x 640 output head) there is almost no arithmetic to amortize the packing
    over, and depending on how the library blocks the problem it may stream the 671 MB weight
    through the caches several times. Measured on our 2-core machine: 1 row ~50-60 ms, 2-16 rows
    150-290 ms. Yet a decoding step is *memory-bound*: the floor is the time to read the weight
    once (671 MB at ~35 GB/s ~ 19 ms).

What the kernel here does instead
    Stream every weight row from memory exactly once. While a small block of weight rows is in
    L1 cache, multiply it by *all* T input rows (they are tiny: 16 x 640 floats = 40 KB). Reading
    dominates, so T rows cost about the same as one. That is the whole economics of speculative
    decoding: verifying k drafted tokens (T = k + 1 rows) costs barely more than decoding one.
    The remaining cost at T = 16 is arithmetic (5.4 GFLOP), which we keep close to the machine's
    FMA peak with a register tile (2 input rows x 4 weight rows = 8 vector accumulators) and hide
    behind memory with a software prefetch of the weight rows a few blocks ahead.

Batch invariance, and why it matters
    Row t of `linear(x, w)` is bit-identical to `linear(x[t:t+1], w)` for every T <= 16. Each
    output element is one dot product, always computed by the same machine instructions in the
    same order: rows are processed in pairs (an odd T is padded with a zero row), weight rows in
    blocks of 4 whose positions do not depend on T. So the logits of position t in a
    speculative verification pass are exactly the logits plain decoding would compute for that
    position, and greedy speculative decoding emits exactly the same tokens as plain greedy
    decoding, by construction rather than "up to float noise". BLAS gives no such guarantee: a
    different T can select a different blocking and thus a different summation order.

Int8 weights
    `Int8Weight` stores each weight row as int8 with one float32 scale (symmetric,
    scale = max|row| / 127). The kernel converts the int8 values to float32 on the fly (exact),
    runs the same dot products, and multiplies each result by its row's scale. It reads a
    quarter of the bytes, so decoding is faster, and it is batch invariant for the same reason.

Threads: the kernels use Numba's thread pool (`numba.set_num_threads(n)` to change it; results
do not depend on the thread count). Compiled code is cached on disk (`cache=True`, in
`__pycache__` next to this file or in NUMBA_CACHE_DIR), so only the very first run compiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, set_parallel_chunksize, types
from numba.core import cgutils
from numba.extending import intrinsic

MAX_KERNEL_ROWS = 17  # k + 1 verify rows for the largest k (16); prefill of longer prompts: BLAS
N_CHUNKS = 64  # contiguous ranges of blocks handed to the threads by prange
DYNAMIC_CHUNKS = 1  # 0: static split of the chunks over threads; n: hand out n at a time
PREFETCH_LOCALITY = 3  # llvm.prefetch locality: 3 = into L1 (prefetcht0), 2 = L2, 1 = L3
PREFETCH_MIN_ROWS = 4  # below this the hardware prefetcher keeps up on its own
PREFETCH_AHEAD = 8  # how many blocks ahead the software prefetch runs

# Reassociation lets LLVM vectorize each dot product (8 float32 lanes, summed at the end);
# contraction lets it use fused multiply-add. No "nnan"/"ninf": a NaN must still come out as NaN.
_FASTMATH = {"reassoc", "contract", "nsz"}


@dataclass(frozen=True)
class Int8Weight:
    """A (d_out, d_in) weight stored as int8 with one float32 scale per output row."""

    q: np.ndarray  # (d_out, d_in) int8, w[j] ~= q[j] * scale[j]
    scale: np.ndarray  # (d_out,) float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape


def quantize_int8(w: np.ndarray) -> Int8Weight:
    """Symmetric per-row int8: scale = max|w_row| / 127, q = round(w / scale)."""
    if w.ndim != 2:
        raise ValueError(f"quantize_int8 expects a 2-D (d_out, d_in) weight, got shape {w.shape}")
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1)  # (d_out,)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)  # (d_out, d_in)
    return Int8Weight(q=np.ascontiguousarray(q), scale=scale)


def dequantize_int8(wq: Int8Weight) -> np.ndarray:
    """The float32 matrix an Int8Weight stands for: q * scale, shape (d_out, d_in)."""
    return wq.q.astype(np.float32) * wq.scale[:, None]


def linear(x: np.ndarray, w: np.ndarray | Int8Weight) -> np.ndarray:
    """y = x @ w.T for x (T, d_in) float32 and w (d_out, d_in) float32 or Int8Weight -> (T, d_out).

    T <= MAX_KERNEL_ROWS uses the batch-invariant streaming kernel; a float32 product with more
    rows uses BLAS (fast for wide products, but its rounding depends on T). Int8 always uses
    the kernel: it never materializes the float32 matrix.
    """
    _check_shapes(x, w)
    T = x.shape[0]
    if isinstance(w, Int8Weight):
        return _run_kernel(x, np.ascontiguousarray(w.q), w.scale.astype(np.float32, copy=False))
    if T > MAX_KERNEL_ROWS:
        return np.ascontiguousarray(x) @ w.T
    return _run_kernel(x, np.ascontiguousarray(w), None)


def warmup() -> None:
    """Compile (or load from the on-disk cache) the kernels for float32 and int8 weights."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8), dtype=np.float32)
    w = rng.standard_normal((9, 8), dtype=np.float32)
    read_only = w.copy()
    read_only.flags.writeable = False  # weights read from a file are often read-only arrays
    linear(x, w)
    linear(x, read_only)
    linear(x, quantize_int8(w))


def _check_shapes(x: np.ndarray, w: np.ndarray | Int8Weight) -> None:
    """Raise a ValueError that names the shapes when x @ w.T is not a float32 product we do."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"linear: x must be a 2-D float32 array (T, d_in), got {got}")
    if isinstance(w, Int8Weight):
        if w.q.dtype != np.int8 or w.q.ndim != 2 or w.scale.shape != (w.q.shape[0],):
            raise ValueError(
                f"linear: Int8Weight needs q int8 (d_out, d_in) and scale (d_out,), "
                f"got q {w.q.dtype} {w.q.shape}, scale {w.scale.shape}"
            )
    elif not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype != np.float32:
        got = f"{w.dtype} {w.shape}" if isinstance(w, np.ndarray) else type(w).__name__
        raise ValueError(f"linear: w must be a 2-D float32 array (d_out, d_in), got {got}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear: x {x.shape} @ w.T needs x.shape[1] == w.shape[1] (d_in), w is {w.shape}"
        )


def _run_kernel(x: np.ndarray, w: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Run the streaming kernel: x (T, d_in), w (d_out, d_in) float32 or int8 -> (T, d_out)."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)  # (T, d_out)
    previous = set_parallel_chunksize(DYNAMIC_CHUNKS)
    try:
        _matmul_kernel(np.ascontiguousarray(x), w, scale, out)
    finally:
        set_parallel_chunksize(previous)
    return out


@intrinsic
def _prefetch(typingctx, flat, i):
    """Ask the CPU to start loading the cache line holding flat[i] (llvm.prefetch, read, L1)."""

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        arr = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, arrty, arr, [args[1]], wraparound=False, boundscheck=False
        )
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        rw, locality, data_cache = (ir.Constant(i32, v) for v in (0, PREFETCH_LOCALITY, 1))
        builder.call(fn, [builder.bitcast(ptr, i8p), rw, locality, data_cache])
        return context.get_dummy_value()

    return types.void(flat, i), codegen


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _dot_1x8(x, t, w, j, out):
    """out[t, j:j+8] = w[j:j+8] @ x[t]: one input row against a block of 8 weight rows.

    Eight independent accumulators; each x value is loaded once and used eight times. LLVM
    vectorizes the k loop (8 float32 lanes per accumulator, summed at the end). It is the same
    compiled loop for every (t, block), so an output element's rounding cannot depend on T.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for k in range(x.shape[1]):
        xk = x[t, k]
        s0 += np.float32(w[j, k]) * xk  # int8 -> float32 is exact; a no-op for float32
        s1 += np.float32(w[j + 1, k]) * xk
        s2 += np.float32(w[j + 2, k]) * xk
        s3 += np.float32(w[j + 3, k]) * xk
        s4 += np.float32(w[j + 4, k]) * xk
        s5 += np.float32(w[j + 5, k]) * xk
        s6 += np.float32(w[j + 6, k]) * xk
        s7 += np.float32(w[j + 7, k]) * xk
    out[t, j], out[t, j + 1], out[t, j + 2], out[t, j + 3] = s0, s1, s2, s3
    out[t, j + 4], out[t, j + 5], out[t, j + 6], out[t, j + 7] = s4, s5, s6, s7


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _dot_1x1(x, t, w, j, out):
    """out[t, j] = w[j] @ x[t]: for the last d_out % 8 weight rows (the same rows for every T)."""
    s = np.float32(0.0)
    for k in range(x.shape[1]):
        s += np.float32(w[j, k]) * x[t, k]
    out[t, j] = s


@njit(cache=True, inline="always")
def _apply_scale(out, scale, j0, j1):
    """out[:, j0:j1] *= scale[j0:j1] for int8 weights; nothing for float32 (scale is None)."""
    if scale is not None:
        for t in range(out.shape[0]):
            for j in range(j0, j1):
                out[t, j] *= scale[j]


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _matmul_kernel(x, w, scale, out):
    """out = x @ w.T (times scale[j] for int8), streaming each weight row from memory once.

    x (T, d_in) float32, w (d_out, d_in) float32 or int8, both C-contiguous; scale (d_out,)
    float32 or None; out (T, d_out) float32.
    The weight is cut into blocks of 8 rows (20 KB of float32, fits L1), the blocks into
    N_CHUNKS contiguous ranges that prange hands to the threads. For each block, every input
    row is multiplied while the block sits in L1. Before row t we prefetch the t-th of T slices
    of the block PREFETCH_AHEAD blocks ahead, so memory keeps streaming while the core does
    arithmetic (at T = 16 arithmetic is most of the time; without this the two alternate).
    """
    T = x.shape[0]
    d_out, d_in = w.shape
    n_blocks = d_out // 8
    flat = w.reshape(-1)  # (d_out * d_in,) the same memory, for the prefetch
    block_len = 8 * d_in  # elements in one block, contiguous
    line = 64 // flat.itemsize  # elements per 64-byte cache line
    n_chunks = min(N_CHUNKS, max(n_blocks, 1))
    prefetch = T >= PREFETCH_MIN_ROWS
    for c in prange(n_chunks):
        for b in range(c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks):
            ahead = (b + PREFETCH_AHEAD) * block_len  # first element of the block ahead
            for t in range(T):
                if prefetch and b + PREFETCH_AHEAD < n_blocks:
                    lo, hi = ahead + t * block_len // T, ahead + (t + 1) * block_len // T
                    for i in range(lo - lo % line, hi, line):
                        _prefetch(flat, i)
                _dot_1x8(x, t, w, 8 * b, out)
            _apply_scale(out, scale, 8 * b, 8 * b + 8)
    for j in range(8 * n_blocks, d_out):  # the last d_out % 8 rows
        for t in range(T):
            _dot_1x1(x, t, w, j, out)
    _apply_scale(out, scale, 8 * n_blocks, d_out)
