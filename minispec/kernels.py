"""Every product with a weight matrix, `y = x @ w.T`, for the few rows that decoding multiplies.

Why not just `x @ w.T`?
    BLAS is built for big, square-ish GEMMs: it copies ("packs") blocks of both operands into
    cache-sized panels and runs a micro-kernel over them. A decoding step is the opposite shape:
    T = 1..17 rows against, e.g., the 262,144 x 640 output head. There is almost no arithmetic
    to pay for the packing, and depending on how the library blocks the problem it may stream
    the 671 MB weight through the caches more than once. Yet such a product is *memory-bound*:
    its floor is the time to read the weight once (on our 2-core machine a streaming read of it
    takes 21-24 ms, and 32 rows through BLAS 162 ms against 92 ms here; the commands and all
    figures are in docs/benchmarks.md).

What we do instead: pack once, then stream
    BLAS packs on every call; we pack once, when the model is loaded (`pack`). A weight is cut
    into panels of 8 rows and each panel is stored k-major: `panels[p, k, l] = w[8p + l, k]`.
    Walking k through a panel then meets, at each k, the 8 weights of 8 output columns side by
    side: one 8-lane AVX2 register. The register tile (`_make_tile`) takes two panels
    (16 output columns) and up to TILE_ROWS = 6 input rows, and for every k does

        acc[r, :] += x[t0 + r, k] * panels[p:p+2, k, :]       for r < rows  (12 vector FMAs)

    12 accumulators + 2 weight vectors + 1 broadcast input fill the 16 AVX2 registers, and 12
    independent FMAs keep both FMA units busy through their 4-cycle latency. Each weight is read
    from memory once, in one sequential stream per thread, and used by every row at once, while
    the hardware prefetcher keeps the stream flowing: verifying k drafted tokens (T = k + 1
    rows) costs little more than decoding one. That is the economics of speculative decoding.
    More than 6 rows go through the same panels again, from cache; a long prompt goes through
    in blocks of ROW_BLOCK rows (256 rows on the head: 1.07x BLAS's time).

Batch invariance, and why it matters
    Row t of `linear(x, w)` is bit-identical to `linear(x[t:t+1], w)`, for every T. Every output
    element is one accumulator lane that sums its products in the same order (k = 0, 1, 2, ...,
    one fused multiply-add each) whichever tile, row position or thread computed it. So in a
    speculative verification pass the logits of position t are exactly the logits plain
    decoding computes for that position, and greedy speculative decoding emits exactly the
    tokens of plain greedy decoding, by construction rather than "up to float noise". BLAS
    promises nothing of the kind: another T may select another blocking and so another
    summation order. (tests/test_kernels.py checks the property for T = 1 to 18 and 40.)

Int8 weights
    `quantize_int8` stores each weight row as int8 with one float32 scale (symmetric,
    scale = max|row| / 127), in the same panels. The tile loads 8 int8 weights (8 bytes instead
    of 32), converts them to float32 and multiplies by their rows' scales: exactly the values
    `unpack` gives, so the result equals `linear(x, pack(unpack(wq)))` bit for bit and decoding
    reads a quarter of the bytes.

A plain NumPy matrix still works: `linear(x, w)` with an ndarray is `x @ w.T` through BLAS,
the reference the kernel is tested against (and what `minispec bench` reports as "NumPy only").

Attention over the KV cache (`attention`) has a kernel too: `model.attend`'s arithmetic, one
fixed loop per (query, head), batch invariant for the same reason.

Why the tile is written in LLVM IR
    Numba has no vector type, and LLVM keeps scalar accumulators in registers but not small
    arrays. `_make_tile` therefore writes the loop above directly as LLVM IR (up to 12
    accumulators, `llvm.fma.v8f32`). Everything around it is ordinary Numba.

Threads and compilation: the kernels run on Numba's thread pool (`numba.set_num_threads(n)`
changes it; results do not depend on the thread count). The tiles are split statically over
the threads: Numba's dynamic scheduling (`set_parallel_chunksize`) was slower when we tried
it. Compiled code is cached on disk (`cache=True`: in `__pycache__` next to this
file, or under NUMBA_CACHE_DIR), so only the very first run compiles (about 11 s here; `warmup()`
does it up front).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

PANEL = 8  # weight rows per panel: one AVX2 register of float32
TILE_PANELS = 2  # panels per register tile: 16 output columns
TILE_ROWS = 6  # input rows per register tile, at most
ROW_BLOCK = 48  # a long prompt's rows go through the weight 48 at a time (they stay in L2)
N_CHUNKS = 64  # contiguous ranges of tiles handed to the threads by prange

# Attention's kernel: reassociation lets LLVM vectorize its dot products; contraction lets it
# use fused multiply-add. No "nnan"/"ninf": a NaN must still come out as NaN.
_FASTMATH = {"reassoc", "contract", "nsz"}


@dataclass(frozen=True)
class PackedWeight:
    """A (d_out, d_in) weight in panels of 8 rows, k-major: panels[p, k, l] = w[8p + l, k].

    float32 panels with scale None, or int8 panels with one float32 scale per row:
    w[j] ~= q[j] * scale[j]. Rows are padded with zeros to a multiple of 16 (two panels).
    """

    panels: np.ndarray  # (n_panels, d_in, 8) float32 or int8
    scale: np.ndarray | None  # (8 * n_panels,) float32 for int8 panels, else None
    d_out: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.d_out, self.panels.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.panels.dtype

    @property
    def nbytes(self) -> int:
        return self.panels.nbytes + (0 if self.scale is None else self.scale.nbytes)


def pack(w: np.ndarray) -> PackedWeight:
    """A float32 (d_out, d_in) matrix as panels for the kernel (a copy; done once at load)."""
    w = _as_matrix(w, "pack")
    return PackedWeight(_to_panels(w.astype(np.float32, copy=False)), None, w.shape[0])


def quantize_int8(w: np.ndarray | PackedWeight) -> PackedWeight:
    """Symmetric per-row int8: scale = max|w_row| / 127, q = round(w / scale), in panels.

    Takes a float32 matrix or its PackedWeight; works on the panels, where row 8p + l is
    panels[p, :, l], so a packed weight is never unpacked.
    """
    if isinstance(w, np.ndarray):
        w = pack(_as_matrix(w, "quantize_int8"))
    if w.scale is not None:
        raise ValueError("quantize_int8: this weight is int8 already")
    n_panels, d_in, _ = w.panels.shape
    q = np.empty((n_panels, d_in, PANEL), np.int8)
    scale = np.empty((n_panels, PANEL), np.float32)  # one per row
    # 256 panels (5 MB) at a time: whole-matrix temporaries would each fault in 671 MB of fresh
    # pages for the head (measured: 2.4-5.0 s in all, against 1.3-1.5 s in blocks).
    for lo in range(0, n_panels, 256):
        part = slice(lo, lo + 256)
        amax = np.abs(w.panels[part]).max(axis=1)  # (256, 8): max |w| of each row
        scale[part] = np.where(amax > 0, amax / 127.0, 1.0)
        q[part] = np.clip(np.rint(w.panels[part] / scale[part, None, :]), -127, 127)
    return PackedWeight(q, scale.reshape(-1), w.d_out)


def unpack(w: PackedWeight) -> np.ndarray:
    """The float32 (d_out, d_in) matrix a PackedWeight stands for (int8: q * scale)."""
    return take_rows(w, np.arange(w.d_out))


def take_rows(w: PackedWeight, rows: np.ndarray) -> np.ndarray:
    """Rows w[rows] as float32, shape (len(rows), d_in): e.g. the embedding lookup."""
    rows = np.asarray(rows, dtype=np.int64)
    m = w.panels[rows // PANEL, :, rows % PANEL]  # (n, d_in)
    if w.scale is None:
        return np.ascontiguousarray(m)
    return m.astype(np.float32) * w.scale[rows, None]


def select_rows(w: PackedWeight, rows: np.ndarray) -> PackedWeight:
    """A smaller PackedWeight of rows w[rows] only, float32 or int8 as w is."""
    rows = np.asarray(rows, dtype=np.int64)
    if w.scale is None:
        return pack(take_rows(w, rows))
    q = w.panels[rows // PANEL, :, rows % PANEL]  # (n, d_in) int8
    panels = _to_panels(q)
    scale = np.ones(panels.shape[0] * PANEL, np.float32)
    scale[: len(rows)] = w.scale[rows]
    return PackedWeight(panels, scale, len(rows))


def linear(x: np.ndarray, w: np.ndarray | PackedWeight) -> np.ndarray:
    """y = x @ w.T for x (T, d_in) float32 -> (T, d_out).

    A PackedWeight goes through the batch-invariant streaming kernel, for every T; a plain
    (d_out, d_in) float32 ndarray through NumPy's BLAS (the reference, not batch invariant).
    """
    _check_shapes(x, w)
    if isinstance(w, np.ndarray):
        return np.ascontiguousarray(x) @ w.T
    out = np.empty((x.shape[0], w.panels.shape[0] * PANEL), np.float32)  # (T, padded d_out)
    _matmul_kernel(np.ascontiguousarray(x), w.panels, w.scale, out)
    return out if out.shape[1] == w.d_out else np.ascontiguousarray(out[:, : w.d_out])


def warmup() -> None:
    """Compile (or load from the on-disk cache) every kernel: float32, int8 and attention."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8), dtype=np.float32)
    w = rng.standard_normal((9, 8), dtype=np.float32)
    linear(x, pack(w))
    linear(x, quantize_int8(w))
    kv = w.reshape(9, 1, 8)  # (capacity, n_kv_heads, head_dim)
    attention(x.reshape(3, 1, 8), kv, kv, np.array([(0, 7), (0, 8), (1, 9)]))


def _as_matrix(w: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        got = f"shape {w.shape}" if isinstance(w, np.ndarray) else type(w).__name__
        raise ValueError(f"{who} expects a 2-D (d_out, d_in) weight, got {got}")
    return w


def _to_panels(m: np.ndarray) -> np.ndarray:
    """(d_out, d_in) -> (n_panels, d_in, 8), zero rows appended to a multiple of 16 rows."""
    d_out, d_in = m.shape
    pad = -d_out % (PANEL * TILE_PANELS)
    if pad:
        m = np.concatenate([m, np.zeros((pad, d_in), m.dtype)])
    return np.ascontiguousarray(m.reshape(-1, PANEL, d_in).transpose(0, 2, 1))


def _check_shapes(x: np.ndarray, w: np.ndarray | PackedWeight) -> None:
    """Raise a ValueError that names the shapes when x @ w.T is not a product we do."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"linear: x must be a 2-D float32 array (T, d_in), got {got}")
    if isinstance(w, PackedWeight):
        p, s = w.panels, w.scale
        int8_ok = p.dtype == np.int8 and s is not None and s.shape == (p.shape[0] * PANEL,)
        if p.ndim != 3 or p.shape[2] != PANEL or p.shape[0] % TILE_PANELS != 0:
            raise ValueError(f"linear: panels must be (2n, d_in, {PANEL}), got {p.shape}")
        if not (p.dtype == np.float32 and s is None or int8_ok):
            raise ValueError(
                "linear: a PackedWeight holds float32 panels without scale, or int8 panels "
                f"with one float32 scale per row; got {p.dtype} panels, scale "
                f"{None if s is None else s.shape}"
            )
    elif not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype != np.float32:
        got = f"{w.dtype} {w.shape}" if isinstance(w, np.ndarray) else type(w).__name__
        raise ValueError(f"linear: w must be a 2-D float32 array (d_out, d_in), got {got}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear: x {x.shape} @ w.T needs x.shape[1] == w.shape[1] (d_in), w is {w.shape}"
        )


# ------------------------------------------------------------------ the register tile, in LLVM IR

_F32X8 = ir.VectorType(ir.FloatType(), PANEL)
_I32X8 = ir.VectorType(ir.IntType(32), PANEL)  # a shuffle mask
_I64 = ir.IntType(64)


def _make_tile(rows: int):
    """A Numba intrinsic: out[t0:t0+rows, 8p:8p+16] = x[t0:t0+rows] @ w[8p:8p+16].T.

    Called as tile(x, t0, panels, p, scale, out) with x (T, d_in) float32, panels of a
    PackedWeight, scale its scales (or None) and out (T, 8 * n_panels) float32. The loop:

        acc = zeros((rows, 2, 8))
        for k in range(d_in):
            w = panels[p:p+2, k, :]                   (int8: float32(q) * scale[8p:8p+16])
            for r in range(rows):
                acc[r] = fma(x[t0 + r, k], w, acc[r])   (one rounding per step, in k order)
        out[t0:t0+rows, 8p:8p+16] = acc
    """

    @intrinsic
    def tile(typingctx, x, t0, panels, p, scale, out):
        int8 = panels.dtype == types.int8

        def codegen(context, builder, signature, args):
            def array(i):  # the data pointer and shape of argument i
                return context.make_array(signature.args[i])(context, builder, args[i])

            xs, ws, outs = array(0), array(2), array(5)
            t0, p = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 3))
            d_in = builder.extract_value(ws.shape, 1)
            n_cols = builder.extract_value(outs.shape, 1)

            def const(value: int) -> ir.Constant:
                return ir.Constant(_I64, value)

            def vector(data, offset):  # data[offset : offset + 8] as one vector (any alignment)
                pointer_type = ir.VectorType(data.type.pointee, PANEL).as_pointer()
                return builder.load(
                    builder.bitcast(builder.gep(data, [offset]), pointer_type), align=1
                )

            def splat(value):  # <value, value, ..., value>
                one = builder.insert_element(ir.Constant(_F32X8, None), value, const(0))
                return builder.shuffle_vector(one, one, ir.Constant(_I32X8, None))

            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32X8, [_F32X8] * 3), "llvm.fma.v8f32"
            )
            panel = [builder.add(p, const(j)) for j in range(TILE_PANELS)]  # p, p + 1
            x_row = [builder.mul(builder.add(t0, const(r)), d_in) for r in range(rows)]  # &x[t0+r]
            w_panel = [builder.mul(builder.mul(q, d_in), const(PANEL)) for q in panel]  # &panels[q]
            if int8:
                row_scale = [vector(array(4).data, builder.mul(q, const(PANEL))) for q in panel]
            # The accumulators live in stack slots; LLVM promotes them to registers.
            acc = [[cgutils.alloca_once(builder, _F32X8) for _ in panel] for _ in range(rows)]
            for slot in (slot for row in acc for slot in row):
                builder.store(ir.Constant(_F32X8, None), slot)  # zeros
            with cgutils.for_range(builder, d_in) as loop:
                k = loop.index
                w = [
                    vector(ws.data, builder.add(w0, builder.mul(k, const(PANEL)))) for w0 in w_panel
                ]
                if int8:  # the weight as float32, exactly as `unpack` computes it: float32(q) * s
                    w = [builder.sitofp(wj, _F32X8) for wj in w]
                    w = [builder.fmul(wj, sj) for wj, sj in zip(w, row_scale, strict=True)]
                for r in range(rows):
                    xk = splat(builder.load(builder.gep(xs.data, [builder.add(x_row[r], k)])))
                    for slot, wj in zip(acc[r], w, strict=True):
                        builder.store(builder.call(fma, [xk, wj, builder.load(slot)]), slot)
            for r in range(rows):
                for slot, q in zip(acc[r], panel, strict=True):
                    row = builder.mul(builder.add(t0, const(r)), n_cols)
                    where = builder.gep(outs.data, [builder.add(row, builder.mul(q, const(PANEL)))])
                    where = builder.bitcast(where, _F32X8.as_pointer())
                    builder.store(builder.load(slot), where, align=1)
            return context.get_dummy_value()

        return types.void(x, t0, panels, p, scale, out), codegen

    return tile


_tile_1, _tile_2, _tile_3, _tile_4, _tile_5, _tile_6 = (_make_tile(r) for r in range(1, 7))


@njit(cache=True, inline="always")
def _tile(x, t0, rows, panels, p, scale, out):
    """The register tile for `rows` (1..TILE_ROWS) input rows: one compiled loop per row count."""
    if rows == 6:
        _tile_6(x, t0, panels, p, scale, out)
    elif rows == 5:
        _tile_5(x, t0, panels, p, scale, out)
    elif rows == 4:
        _tile_4(x, t0, panels, p, scale, out)
    elif rows == 3:
        _tile_3(x, t0, panels, p, scale, out)
    elif rows == 2:
        _tile_2(x, t0, panels, p, scale, out)
    else:
        _tile_1(x, t0, panels, p, scale, out)


@njit(parallel=True, cache=True)
def _matmul_kernel(x, panels, scale, out):
    """out = x @ w.T for the PackedWeight (panels, scale), streaming the panels once per block.

    x (T, d_in) float32 C-contiguous; panels (n_panels, d_in, 8) float32 or int8; scale
    (8 * n_panels,) float32 or None; out (T, 8 * n_panels) float32. The tiles (pairs of panels)
    are cut into N_CHUNKS contiguous ranges that prange hands to the threads; within a range,
    every tile is multiplied by all rows of a block of ROW_BLOCK rows, TILE_ROWS at a time.
    """
    T = x.shape[0]
    n_tiles = panels.shape[0] // TILE_PANELS
    n_chunks = min(N_CHUNKS, max(n_tiles, 1))
    for c in prange(n_chunks):
        for r0 in range(0, T, ROW_BLOCK):
            r1 = min(T, r0 + ROW_BLOCK)
            for j in range(c * n_tiles // n_chunks, (c + 1) * n_tiles // n_chunks):
                for t0 in range(r0, r1, TILE_ROWS):
                    _tile(x, t0, min(TILE_ROWS, r1 - t0), panels, TILE_PANELS * j, scale, out)


# ------------------------------------------------------------------ attention over the KV cache


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """For each query t: softmax(q_t K^T) V over the cache rows seen[t, 0] <= s < seen[t, 1].

    The arithmetic of `model.attend` (grouped-query attention, one query at a time), for the
    queries of decoding, verification and prompts alike. q (T, n_heads, head_dim), scaled; keys and
    values (capacity, n_kv_heads, head_dim): one layer's cache; seen (T, 2) int: the visible
    key rows of each query (causal mask and sliding window). Returns (T, n_heads, head_dim).

    Why a kernel: in NumPy each query costs 8 small calls (~80 us, mostly call overhead), 23 ms
    of a 16-token verify pass, and a 256-token prompt's attention takes 3-4x the kernel's time.
    Every (query, head) here is one fixed sequence of loops, so its result does not depend on T
    or on the thread that ran it: batch invariant, like `linear`.
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
