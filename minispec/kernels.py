"""Every product with a weight matrix, `y = x @ w.T`, for the few rows that decoding multiplies.

Why not just `x @ w.T`?
    BLAS is built for big, square-ish GEMMs: it copies ("packs") blocks of both operands into
    cache-sized panels and runs a micro-kernel over them. A decoding step is the opposite shape:
    T = 1..17 rows against, e.g., the 262,144 x 640 output head. There is almost no arithmetic
    to pay for the packing, and depending on how the library blocks the problem it may stream
    the 671 MB weight through the caches more than once. Measured on our 2-core machine: 1 row
    ~26 ms, 2 to 17 rows 70-110 ms (on a busy machine up to 60 and 290 ms). Yet such a product
    is *memory-bound*: its floor is the time to read the weight once (671 MB at ~37 GB/s,
    about 18 ms).

What the kernel does instead
    Stream every weight row from memory exactly once. While a block of 8 weight rows (20 KB)
    sits in L1 cache, multiply it by *all* T input rows (they are tiny: 17 x 640 floats is
    44 KB). Reading dominates, so a few rows cost little more than one. That is the economics of
    speculative decoding: verifying k drafted tokens (T = k + 1 rows) costs little more than
    decoding one. What remains at larger T is arithmetic (5.4 GFLOP for the head at T = 16,
    ~2.3 ms per row on two cores), kept near the FMA peak by register tiles (2 input rows x
    4 weight rows: 6 loads feed 8 fused multiply-adds) and, from 8 rows on, partly hidden
    behind memory by prefetching blocks ahead. Measured on the head (min of several runs, on
    different days): T = 1: 20-24 ms, T = 5: 33-41 ms, T = 16: 44-57 ms; int8: 9-11, 18-20,
    ~40 ms. Below 8 rows the memory traffic and the arithmetic take turns rather than overlap,
    so each extra row still costs its arithmetic (docs/benchmarks.md has the measurements).

Batch invariance, and why it matters
    Row t of `linear(x, w)` is bit-identical to `linear(x[t:t+1], w)` for every
    T <= MAX_KERNEL_ROWS. Every output element is one dot product computed the same way
    whatever T is: weight-row blocks sit at positions that do not depend on T, and each
    accumulator is the same 8-lane vector loop over k followed by the same summation tree,
    whether its row went through the pair tile (`_dot_2x4`) or the lone-row tile
    (`_dot_1x8`, for T = 1 and the last row of an odd T). So in a speculative verification pass
    the logits of position t are exactly the logits plain decoding computes for that position,
    and greedy speculative decoding emits exactly the tokens of plain greedy decoding, by
    construction rather than "up to float noise". BLAS promises nothing of the kind: another T
    may select another blocking and so another summation order. (The tests check the property
    for every T from 1 to MAX_KERNEL_ROWS, for odd and even sizes.)

Int8 weights
    `Int8Weight` stores each weight row as int8 with one float32 scale (symmetric,
    scale = max|row| / 127). The kernel reads a block of 8 int8 rows (5 KB instead of 20 KB),
    dequantizes it into a float32 buffer in L1 (float32(q) * scale: exactly the values
    `dequantize_int8` gives) and runs the same float32 tiles on the buffer. Decoding reads a
    quarter of the bytes, the result is batch invariant for the same reason, and it equals
    `linear(x, dequantize_int8(wq))` bit for bit.

Attention
    `attention` does the arithmetic of `model.attend` for the few queries of decoding and
    verification, batch invariant for the same reason (its docstring says why it exists).

Threads and compilation: the kernels run on Numba's thread pool (`numba.set_num_threads(n)`
changes it; results do not depend on the thread count). The chunks are split statically over
the threads: Numba's dynamic scheduling (`set_parallel_chunksize`) cost ~8 ms per call on a
busy machine. Compiled code is cached on disk (`cache=True`: in `__pycache__` next to this
file, or under NUMBA_CACHE_DIR), so only the very first run compiles (about 10 s; `warmup()`
does it up front).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

MAX_KERNEL_ROWS = 17  # k + 1 verify rows for the largest k (16); prefill of longer prompts: BLAS
N_CHUNKS = 64  # contiguous ranges of blocks handed to the threads by prange
PREFETCH_LOCALITY = 3  # llvm.prefetch locality: 3 = into L1 (prefetcht0), 2 = L2, 1 = L3
PREFETCH_MIN_ROWS = 8  # fewer rows: software prefetch measured no gain (or a loss)
PREFETCH_AHEAD = 2  # how many blocks ahead the software prefetch runs

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
    _matmul_kernel(np.ascontiguousarray(x), w, scale, out)
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
def _dot_2x4(x, t, w, wj, out, oj):
    """out[t:t+2, oj:oj+4] = x[t:t+2] @ w[wj:wj+4].T: two input rows, four weight rows.

    Eight independent accumulators. Each loaded weight value serves both input rows and each
    input value all four weight rows: 6 loads feed 8 fused multiply-adds, the best ratio that
    fits the 16 AVX2 registers. LLVM vectorizes the k loop: every accumulator is 8 float32
    lanes over k = 0, 8, 16, ... then, at the end, the 8 lanes are summed in a fixed tree.
    """
    a0 = a1 = a2 = a3 = np.float32(0.0)  # row t   against weight rows wj..wj+3
    b0 = b1 = b2 = b3 = np.float32(0.0)  # row t+1 against weight rows wj..wj+3
    for k in range(x.shape[1]):
        xa = x[t, k]
        xb = x[t + 1, k]
        w0 = w[wj, k]
        w1 = w[wj + 1, k]
        w2 = w[wj + 2, k]
        w3 = w[wj + 3, k]
        a0 += w0 * xa
        a1 += w1 * xa
        a2 += w2 * xa
        a3 += w3 * xa
        b0 += w0 * xb
        b1 += w1 * xb
        b2 += w2 * xb
        b3 += w3 * xb
    out[t, oj], out[t, oj + 1], out[t, oj + 2], out[t, oj + 3] = a0, a1, a2, a3
    out[t + 1, oj], out[t + 1, oj + 1], out[t + 1, oj + 2], out[t + 1, oj + 3] = b0, b1, b2, b3


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _dot_1x8(x, t, w, wj, out, oj):
    """out[t, oj:oj+8] = x[t] @ w[wj:wj+8].T: a lone input row (T = 1, or the last of odd T).

    Also eight accumulators, so LLVM gives each the very same 8-lane loop and final tree as in
    `_dot_2x4`: an output element comes out bit-identical whichever tile computed it (the tests
    check this for every T from 1 to MAX_KERNEL_ROWS). A lone row needs no zero padding, so
    T = 1 does half the arithmetic a padded pair would.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for k in range(x.shape[1]):
        xk = x[t, k]
        s0 += w[wj, k] * xk
        s1 += w[wj + 1, k] * xk
        s2 += w[wj + 2, k] * xk
        s3 += w[wj + 3, k] * xk
        s4 += w[wj + 4, k] * xk
        s5 += w[wj + 5, k] * xk
        s6 += w[wj + 6, k] * xk
        s7 += w[wj + 7, k] * xk
    out[t, oj], out[t, oj + 1], out[t, oj + 2], out[t, oj + 3] = s0, s1, s2, s3
    out[t, oj + 4], out[t, oj + 5], out[t, oj + 6], out[t, oj + 7] = s4, s5, s6, s7


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _dot_1x1(x, t, w, wj, out, oj):
    """out[t, oj] = x[t] @ w[wj]: the last d_out % 8 weight rows, one row of x at a time."""
    s = np.float32(0.0)
    for k in range(x.shape[1]):
        s += w[wj, k] * x[t, k]
    out[t, oj] = s


@njit(cache=True, inline="always")
def _dequantize_rows(q, scale, j, n, buf):
    """buf[:n] = q[j:j+n] * scale[j:j+n, None] in float32: exactly what dequantize_int8 gives."""
    for r in range(n):
        s = scale[j + r]
        for k in range(q.shape[1]):
            buf[r, k] = np.float32(q[j + r, k]) * s


@njit(cache=True, inline="always")
def _prefetch_part(flat, start, length, part, n_parts):
    """Prefetch the part-th of n_parts slices of flat[start:start+length], line by line."""
    line = 64 // flat.itemsize  # elements per 64-byte cache line
    lo = start + part * length // n_parts
    hi = start + (part + 1) * length // n_parts
    for i in range(lo - lo % line, hi, line):
        _prefetch(flat, i)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _block_times_rows(x, w, wj, out, oj, flat, ahead, ahead_len):
    """out[:, oj:oj+8] = x @ w[wj:wj+8].T; row pairs go through _dot_2x4, an odd last row _dot_1x8.

    If ahead_len > 0, the slice flat[ahead:ahead+ahead_len] (a block further on) is prefetched
    in as many parts as there are tile calls, a few cache lines before each. Spread out like
    this it helped (head, T = 16: ~48 instead of ~65 ms); one burst per block did not.
    """
    T = x.shape[0]
    n_calls = T // 2 * 2 + T % 2
    call = 0
    for half in range(2):  # weight rows wj..wj+3, then wj+4..wj+7
        for t in range(0, T - 1, 2):
            if ahead_len > 0:
                _prefetch_part(flat, ahead, ahead_len, call, n_calls)
            _dot_2x4(x, t, w, wj + 4 * half, out, oj + 4 * half)
            call += 1
    if T % 2 == 1:
        if ahead_len > 0:
            _prefetch_part(flat, ahead, ahead_len, call, n_calls)
        _dot_1x8(x, T - 1, w, wj, out, oj)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _matmul_kernel(x, w, scale, out):
    """out = x @ w.T, or x @ (w * scale[:, None]).T for int8, streaming w from memory once.

    x (T, d_in) float32, w (d_out, d_in) float32 or int8, both C-contiguous; scale (d_out,)
    float32, or None for float32 weights; out (T, d_out) float32.
    The weight is cut into blocks of 8 rows (20 KB in float32: they fit L1), the blocks into
    N_CHUNKS contiguous ranges that prange hands to the threads. Each block is multiplied by
    all T input rows while it sits in L1. An int8 block is first dequantized into a float32
    buffer (one pass, reading 5 KB instead of 20 KB) and the same float32 tiles run on that.
    From PREFETCH_MIN_ROWS rows on, we also prefetch the block PREFETCH_AHEAD blocks ahead,
    so memory keeps streaming while the core does arithmetic. (Below that, the arithmetic and
    the memory traffic mostly take turns: each extra row adds ~2.3 ms on the head.)
    """
    T = x.shape[0]
    d_out, d_in = w.shape
    n_blocks = d_out // 8
    flat = w.reshape(-1)  # (d_out * d_in,) the same memory, for the prefetch
    block_len = 8 * d_in  # elements in one block, contiguous
    n_chunks = min(N_CHUNKS, max(n_blocks, 1))
    for c in prange(n_chunks):
        buf = np.empty((8, d_in), np.float32)  # one dequantized block (int8 weights only)
        for b in range(c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks):
            ahead = (b + PREFETCH_AHEAD) * block_len
            prefetch = T >= PREFETCH_MIN_ROWS and b + PREFETCH_AHEAD < n_blocks
            ahead_len = block_len if prefetch else 0
            if scale is None:
                _block_times_rows(x, w, 8 * b, out, 8 * b, flat, ahead, ahead_len)
            else:
                _dequantize_rows(w, scale, 8 * b, 8, buf)
                _block_times_rows(x, buf, 0, out, 8 * b, flat, ahead, ahead_len)
    row = np.empty((1, d_in), np.float32)  # one dequantized row (int8 weights only)
    for j in range(8 * n_blocks, d_out):  # the last d_out % 8 rows, the same way for every T
        if scale is None:
            for t in range(T):
                _dot_1x1(x, t, w, j, out, j)
        else:
            _dequantize_rows(w, scale, j, 1, row)
            for t in range(T):
                _dot_1x1(x, t, row, 0, out, j)


# ------------------------------------------------------------------ attention over the KV cache


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """For each query t: softmax(q_t K^T) V over the cache rows seen[t, 0] <= s < seen[t, 1].

    The arithmetic of `model.attend` (grouped-query attention, one query at a time) for the few
    queries of decoding and verification. q (T, n_heads, head_dim), already scaled; keys and
    values (capacity, n_kv_heads, head_dim): one layer's cache; seen (T, 2) int: the visible
    key rows of each query (causal mask and sliding window). Returns (T, n_heads, head_dim).

    Why a kernel: in NumPy each query costs 8 small calls (~80 us, mostly call overhead), 23 ms
    of a 16-token verify pass. Here every (query, head) is one fixed sequence of loops, so its
    result does not depend on T or on the thread that ran it: batch invariant, like `linear`.
    """
    T, n_heads, head_dim = q.shape
    if keys.shape[2] != head_dim or n_heads % keys.shape[1] != 0 or seen.shape != (T, 2):
        raise ValueError(
            f"attention: q {q.shape}, keys {keys.shape} and seen {seen.shape} do not fit together"
        )
    out = np.empty((T, n_heads, head_dim), np.float32)
    _attention_kernel(np.ascontiguousarray(q), keys, values, seen.astype(np.int64), out)
    return out


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _attention_kernel(q, keys, values, seen, out):
    """out[t, h] = softmax(K q[t, h]) V over the keys query t sees, every (t, h) in parallel."""
    T, n_heads, head_dim = q.shape
    group = n_heads // keys.shape[1]  # query heads per key/value head
    for th in prange(T * n_heads):
        t, h = th // n_heads, th % n_heads
        kv = h // group
        lo, hi = seen[t, 0], seen[t, 1]
        scores = np.empty(hi - lo, np.float32)  # (S,)
        top = np.float32(-np.inf)
        for s in range(lo, hi):
            acc = np.float32(0.0)
            for d in range(head_dim):
                acc += q[t, h, d] * keys[s, kv, d]
            scores[s - lo] = acc
            top = max(top, acc)
        total = np.float32(0.0)
        for s in range(hi - lo):  # softmax, shifted by the max so that exp never overflows
            scores[s] = np.exp(scores[s] - top)
            total += scores[s]
        mixed = np.zeros(head_dim, np.float32)  # (head_dim,): sum over s of p_s v_s
        for s in range(lo, hi):
            p = scores[s - lo] / total
            for d in range(head_dim):
                mixed[d] += p * values[s, kv, d]
        out[t, h] = mixed
