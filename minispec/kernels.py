"""Every product with a weight matrix, `y = x @ w.T`, for the few rows that decoding multiplies.

Why not just `x @ w.T`?
    BLAS is built for big, square-ish GEMMs: it copies ("packs") blocks of both operands into
    cache-sized panels and runs a micro-kernel over them. A decoding step is the opposite shape:
    T = 1..17 rows against, e.g., the 262,144 x 640 output head. There is almost no arithmetic
    to pay for the packing, and depending on how the library blocks the problem it may stream
    the 671 MB weight through the caches more than once. Yet such a product is *memory-bound*:
    its floor is the time to read the weight once. (How close BLAS and this kernel come to that
    floor on the project's machine, and the commands that measure it: docs/benchmarks.md.)

What we do instead: pack once, then stream
    BLAS packs on every call; we pack once, when the model is loaded (`pack`). A weight is cut
    into panels of 16 rows and each panel is stored k-major: `panels[p, k, l] = w[16p + l, k]`.
    Walking k through a panel then meets, at each k, the 16 weights of 16 output columns side
    by side in one 64-byte cache line: one AVX-512 register, or two AVX2 ones. The register
    tile (`_tile`) takes TILE_COLS output columns and up to TILE_ROWS input rows, and for
    every k does

        acc[r, :] += x[t0 + r, k] * w[cols, k]        for r < rows  (one vector FMA per register)

    The tile's shape follows the registers the CPU has (`LANES`, read when this module loads):
      - AVX-512, 32 registers of 16 floats: 2 panels (32 columns) x 12 rows = 24 accumulators;
      - AVX2, 16 registers of 8 floats: 1 panel (16 columns) x 6 rows = 12 accumulators.
    Either way the accumulators, the 2 weight vectors and 1 broadcast input fill the register
    file, and 12 or 24 independent FMAs keep both FMA units busy through their 4-cycle latency.
    Each weight is read from memory once, in one sequential stream per thread, and used by
    every row at once: verifying k drafted tokens (T = k + 1 rows) costs little more than
    decoding one. That is the economics of speculative decoding. The tile also asks for the
    weights PREFETCH steps of k ahead (`llvm.prefetch`): with rows of arithmetic per weight
    the hardware prefetcher alone fell behind, and the memory sat idle while the FMAs ran.
    A float32 tile of one row does without: there the hardware keeps up and the hint only
    costs instructions. (Measured, not derived: int8 needs it even for one row. The figures
    are in docs/benchmarks.md, under prefetch_distance.py.)

    With AVX2, two or three float32 rows (verifying one or two drafts) take two panels at a
    time instead (`_few_rows_tile`, FEW_ROWS): twice the FMA chains per row.

    More rows than TILE_ROWS (T = 16 is 12 + 4 with AVX-512) take turns, tile by tile, on
    each block of K_BLOCK steps of k while its weights sit in L1, so the stream from memory
    never pauses for a second pass over the same panels (docs/benchmarks.md has the head at
    T = 16 before and after). A long prompt goes through in blocks of ROW_BLOCK rows.

Batch invariance, and why it matters
    Row t of `linear(x, w)` is bit-identical to `linear(x[t:t+1], w)`, for every T. Every output
    element is one accumulator lane that sums its products in the same order (k = 0, 1, 2, ...,
    one fused multiply-add each) whichever tile, row position or thread computed it. So in a
    speculative verification pass the logits of position t are exactly the logits plain
    decoding computes for that position, and greedy speculative decoding emits exactly the
    tokens of plain greedy decoding, by construction rather than "up to float noise". BLAS
    promises nothing of the kind: another T may select another blocking and so another
    summation order. (tests/test_kernels.py checks the property for T = 1 to 18 and 60.) Nor does
    the result depend on the tile's shape: AVX2 and AVX-512 give the same bits.

Int8 weights
    `quantize_int8` stores each weight row as int8 with one float32 scale (symmetric,
    scale = max|row| / 127), in the same panels. The tile loads LANES int8 weights (a quarter
    of the bytes of float32), converts them to float32 and multiplies them by their rows'
    scales: exactly the values `unpack` gives, so the result equals
    `linear(x, pack(unpack(wq)))` bit for bit and decoding reads a quarter of the bytes.

A plain NumPy matrix still works: `linear(x, w)` with an ndarray is `x @ w.T` through BLAS,
the reference the kernel is tested against (and what `minispec bench` reports as "NumPy only").

Attention over the KV cache has a kernel too (`attend_each`): `model.attend`'s arithmetic, its
two products done by the same tile (which follows its arrays' strides, so it also reads a
row-major matrix or the cache in place, `as_panels`), batch invariant for the same reason.

Why the tile is written in LLVM IR
    Numba has no vector type, and LLVM keeps scalar accumulators in registers but not small
    arrays. `_tile` therefore writes the loop above directly as LLVM IR (up to 24 vector
    accumulators, `llvm.fma.v16f32` or `.v8f32`), one copy per row count behind a `switch`.
    Everything around it is ordinary Numba.

Sampling has three kernels of its own: `distribution_row` (temperature, top-k and top-p over
a row of 262,144 logits without sorting it: `sampling.distribution`), `sample_row` (an inverse-
CDF draw) and `top_n` (the trace's few most likely tokens). A sampled step makes one such row
per verified and per drafted position, so each costs a fraction of a millisecond, not the
milliseconds of NumPy's sorts.

Threads and compilation: the kernels run on Numba's thread pool (`numba.set_num_threads(n)`
changes it; results do not depend on the thread count). The tiles are split statically over
the threads: Numba's dynamic scheduling (`set_parallel_chunksize`) was slower when we tried
it. Compiled code is cached on disk (`cache=True`: in `__pycache__` next to this
file, or under NUMBA_CACHE_DIR), so only the very first run compiles (docs/benchmarks.md, "Compiling
the kernels"); `warmup()`, which `load_model` calls, does it up front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_lanes() -> int:
    """float32 lanes of the widest vector register Numba compiles for: 16 with AVX-512, else 8.

    Numba compiles for this machine's CPU unless NUMBA_CPU_FEATURES says otherwise; so do we.
    """
    features = numba.config.CPU_FEATURES
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return 16 if "+avx512f" in features.split(",") else 8


PANEL = 16  # weight rows per panel: at each k, 16 float32 weights = one 64-byte cache line
PAD_ROWS = 2 * PANEL  # rows are padded to whole pairs of panels, the widest tile
LANES = _vector_lanes()
# The register tile: 32 registers with AVX-512 hold 12 rows x 2 vectors of accumulators, the
# 16 of AVX2 hold 6 x 2 (each leaves room for the 2 weight vectors and 1 broadcast input).
TILE_PANELS, TILE_ROWS = (2, 12) if LANES == 16 else (1, 6)
TILE_COLS = TILE_PANELS * PANEL  # output columns per tile: 32 or 16
# One row alone (decoding) goes through WIDE_PANELS panels at a time: 8 accumulators either way
WIDE_PANELS = 8 if LANES == 16 else 4
# A few float32 rows (verifying k <= 2 drafts) on AVX2 go through 2 panels at a time: 3 rows
# x 2 panels x 2 vectors = 12 accumulators, where TILE_PANELS = 1 keeps only 2 per row busy
# (faster for float32, not for int8: docs/benchmarks.md, fourth session). AVX-512's tile has
# 2 panels already: FEW_ROWS = 0 turns this off there.
FEW_PANELS, FEW_ROWS = 2, (0 if LANES == 16 else 3)
PREFETCH = 64  # the tile asks for each panel's weights 64 steps of k ahead (4 KB in float32)
# ... when it has this many rows or more (float32, one row: the hardware keeps up alone)
PREFETCH_ROWS = {"float32": 2, "int8": 1}
K_BLOCK = 128  # ... more rows than one tile take turns on 128 steps of k at a time
ROW_BLOCK = 48  # a long prompt's rows go through the weight 48 at a time (they stay in L2)
N_CHUNKS = 64  # contiguous ranges of tiles handed to the threads by prange
N_ATTENTION_CHUNKS = 16  # contiguous ranges of attention's column blocks, likewise
SERIAL_SIZE = 16384  # the norms and GeGLU of at most this many elements stay on one thread

# Attention's kernel: reassociation lets LLVM vectorize its dot products; contraction lets it
# use fused multiply-add. No "nnan"/"ninf": a NaN must still come out as NaN.
_FASTMATH = {"reassoc", "contract", "nsz"}


@dataclass(frozen=True)
class PackedWeight:
    """A (d_out, d_in) weight in panels of 16 rows, k-major: panels[p, k, l] = w[16p + l, k].

    float32 panels with scale None, or int8 panels with one float32 scale per row:
    w[j] ~= q[j] * scale[j]. Rows are padded with zeros to a multiple of 32 (two panels).
    """

    panels: np.ndarray  # (n_panels, d_in, 16) float32 or int8
    scale: np.ndarray | None  # (16 * n_panels,) float32 for int8 panels, else None
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

    Takes a float32 matrix or its PackedWeight; works on the panels, where row 16p + l is
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
    # pages for the head, which took about twice as long in all as these blocks.
    for lo in range(0, n_panels, 256):
        part = slice(lo, lo + 256)
        amax = np.abs(w.panels[part]).max(axis=1)  # (256, 16): max |w| of each row
        scale[part] = np.where(amax > 0, amax / 127.0, 1.0)
        q[part] = np.clip(np.rint(w.panels[part] / scale[part, None, :]), -127, 127)
    return PackedWeight(q, scale.reshape(-1), w.d_out)


def unpack(w: PackedWeight) -> np.ndarray:
    """The float32 (d_out, d_in) matrix a PackedWeight stands for (int8: q * scale)."""
    return take_rows(w, np.arange(w.d_out))


def take_rows(w: np.ndarray | PackedWeight, rows: np.ndarray) -> np.ndarray:
    """Rows w[rows] as a float32 array, shape (len(rows), d_in): e.g. the embedding lookup."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(w, np.ndarray):
        return w[rows]
    m = w.panels[rows // PANEL, :, rows % PANEL]  # (n, d_in)
    if w.scale is None:
        return np.ascontiguousarray(m)
    return m.astype(np.float32) * w.scale[rows, None]


def select_rows(w: np.ndarray | PackedWeight, rows: np.ndarray) -> np.ndarray | PackedWeight:
    """A smaller weight of rows w[rows] only, of w's kind: packed float32 or int8, or plain."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(w, np.ndarray):
        return np.ascontiguousarray(w[rows])
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


def warmup(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Compile (or load from Numba's on-disk cache) every kernel in every variant the model uses.

    Numba compiles a kernel once per kind of argument (dtype, and whether an array is
    contiguous), and the norms, GeGLU and attention each have a one-thread and a threaded
    variant. The calls below take each of those paths once, with arrays laid out as the model
    lays out Gemma's (a head_dim of whole tiles), so that the first timed run measures the
    model, not the compiler. `load_model` calls it. progress("kernels compiled", done, total)
    is called after each group of calls.
    """
    steps = _warmup_steps()
    for done, step in enumerate(steps, start=1):
        step()
        if progress is not None:
            progress("kernels compiled", done, len(steps))


def _warmup_steps() -> list[Callable[[], object]]:
    """`warmup`'s calls, one group of variants per item."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    w = rand(32, 8)
    steps: list[Callable[[], object]] = [
        lambda: linear(rand(1, 8), pack(w)),
        lambda: linear(rand(1, 8), quantize_int8(w)),
    ]
    for n_rows in (2, SERIAL_SIZE // 8 + 1):  # a few rows stay on one thread, more go to the pool
        x = rand(n_rows, 8)
        steps += [lambda x=x: rms_norm_rows(x, w[0], 1e-6), lambda x=x: gelu_gate(x, x)]
    steps.append(lambda: rope_rows(rand(3, 2, 8), rand(3, 4), rand(3, 4)))  # as `rope_angles`
    n_heads, capacity = 4, 64
    for head_dim in (2 * TILE_COLS, TILE_COLS // 2):  # Gemma's whole tiles; a tiny model's padded
        kv = rand(capacity, 1, head_dim)  # (capacity, n_kv_heads, head_dim)
        # decoding (one unit of work, one thread), a verify pass (two units: the pool), a prompt
        # (values copied); the last two thresholds move with the tile's width (16 or 32 columns)
        for T in (1, TILE_COLS // n_heads + 1, 4 * TILE_COLS // n_heads + 1):
            seen = np.stack([np.zeros(T, np.int64), np.arange(capacity - T, capacity) + 1], axis=1)
            q = rand(T, n_heads, head_dim)
            steps.append(lambda q=q, kv=kv, seen=seen: attend_each(q, kv, kv, seen))
    for logits in (rand(64), rand(64).astype(np.float64)):  # the model's rows; a test's
        for top_k, top_p in ((0, 1.0), (0, 0.9), (8, 0.9)):  # all kept; top-p; top-k
            steps.append(
                lambda logits=logits, top_k=top_k, top_p=top_p: distribution_row(
                    logits, 0.7, top_k, top_p, np.empty(64)
                )
            )
        probs = np.abs(logits).astype(np.float64)
        steps += [
            lambda probs=probs: sample_row(probs, 0.5),
            lambda logits=logits: top_n(logits, 5),  # a row of logits
            lambda probs=probs: top_n(probs, 5),  # a row of probabilities
        ]
    return steps


def _as_matrix(w: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.size == 0:
        got = f"shape {w.shape}" if isinstance(w, np.ndarray) else type(w).__name__
        raise ValueError(f"{who} expects a non-empty 2-D (d_out, d_in) weight, got {got}")
    return w


def _to_panels(m: np.ndarray) -> np.ndarray:
    """(d_out, d_in) -> (n_panels, d_in, 16), zero rows appended to a multiple of 32 rows."""
    d_out, d_in = m.shape
    pad = -d_out % PAD_ROWS
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
        if p.ndim != 3 or p.shape[2] != PANEL or p.shape[0] * PANEL % PAD_ROWS != 0:
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

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _tile_of(n_panels: int, max_rows: int):
    """A Numba intrinsic: out[t0:t0+rows, cols] += x[t0:t0+rows, k0:k1] @ w[cols, k0:k1].T,
    for n_panels panels (cols = 16p .. 16p + 16 n_panels) and 1..max_rows rows.

    `_tile` (TILE_PANELS x TILE_ROWS) does every product but AVX2's two- and three-row float32
    ones (`_few_rows_tile`). Called as
    _tile(x, t0, rows, panels, p, k0, k1, scale, out) with x (T, d_in) float32, rows in
    1..TILE_ROWS, panels of a PackedWeight (or any (n, K, 16) view with contiguous lanes,
    `as_panels`), the steps k0 <= k < k1 of the sum, scale the weight's scales (or None) and
    out (T, 16 * n_panels) float32; every address follows the arrays' strides. For each row
    count the IR holds one copy of the loop

        acc = zeros((rows, TILE_COLS)) if k0 == 0 else out[t0:t0+rows, cols]
        for k in range(k0, k1):
            prefetch(panels[p : p + TILE_PANELS, k + PREFETCH, :])   (a hint: changes no bit)
            w = panels[p : p + TILE_PANELS, k, :]            (int8: float32(q) * scale[cols])
            for r in range(rows):
                acc[r] = fma(x[t0 + r, k], w, acc[r])   (one rounding per step, in k order)
        out[t0:t0+rows, cols] = acc

    with w and each acc[r] held as TILE_COLS / LANES vector registers, and a `switch` on rows
    picks the copy (one intrinsic, not one per row count: Numba cannot index a tuple of
    intrinsics at run time). Splitting k into blocks changes no bit: between blocks an
    accumulator waits in out, exactly as it was; nor does the tile's shape: each output is
    the same FMA chain in k order whichever tile computes it.
    """

    @intrinsic
    def tile(typingctx, x, t0, rows, panels, p, k0, k1, scale, out):
        int8 = panels.dtype == types.int8

        def codegen(context, builder, signature, args):
            def array(i):  # the data pointer and shape of argument i
                return context.make_array(signature.args[i])(context, builder, args[i])

            def int64(i):
                return context.cast(builder, args[i], signature.args[i], types.int64)

            xs, ws, outs = array(0), array(3), array(8)
            scales = array(7) if int8 else None
            t0, rows, p, k0, k1 = (int64(i) for i in (1, 2, 4, 5, 6))
            done = builder.append_basic_block("tile.done")
            switch = builder.switch(rows, done)
            for r in range(1, max_rows + 1):
                block = builder.append_basic_block(f"tile.rows{r}")
                switch.add_case(ir.Constant(_I64, r), block)
                builder.position_at_end(block)
                _emit_tile_loop(builder, r, n_panels, xs, ws, scales, outs, t0, p, k0, k1)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return types.void(x, t0, rows, panels, p, k0, k1, scale, out), codegen

    return tile


_tile = _tile_of(TILE_PANELS, TILE_ROWS)
_few_rows_tile = _tile_of(FEW_PANELS, max(FEW_ROWS, 1))


@intrinsic
def _row_tile(typingctx, x, t0, panels, p, k0, k1, scale, out):
    """`_tile` for one row and WIDE_PANELS panels: out[t0, cols] += x[t0, k0:k1] @ w[cols, k0:k1].T
    with cols = 16p .. 16p + 16 WIDE_PANELS.

    Why: one row of `_tile` keeps only TILE_COLS / LANES accumulators (2), so each k waits for
    the FMA before it (4 cycles): one FMA chain per vector is latency-bound, not memory-bound.
    For int8 weights that is slower than memory can deliver them. WIDE_PANELS panels keep 8
    chains in flight. Each output is still the same one FMA chain in k order: the same bits.
    """
    int8 = panels.dtype == types.int8

    def codegen(context, builder, signature, args):
        def array(i):
            return context.make_array(signature.args[i])(context, builder, args[i])

        def int64(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        xs, ws, outs = array(0), array(2), array(7)
        scales = array(6) if int8 else None
        t0, p, k0, k1 = (int64(i) for i in (1, 3, 4, 5))
        _emit_tile_loop(builder, 1, WIDE_PANELS, xs, ws, scales, outs, t0, p, k0, k1)
        return context.get_dummy_value()

    return types.void(x, t0, panels, p, k0, k1, scale, out), codegen


def _emit_tile_loop(builder, rows, n_panels, xs, ws, scales, outs, t0, p, k0, k1) -> None:
    """The IR of one tile with a fixed number of rows and of panels (see `_tile`)."""
    f32xn = ir.VectorType(ir.FloatType(), LANES)

    def const(value: int) -> ir.Constant:
        return ir.Constant(_I64, value)

    def stride(array, dim: int, itemsize: int):  # in elements: Numba keeps them in bytes
        return builder.sdiv(builder.extract_value(array.strides, dim), const(itemsize))

    # Every address follows the arrays' own strides (the last axis of each must be contiguous):
    # packed panels, or a row-major matrix seen as panels (`as_panels`), or rows of a cache.
    panel_stride = stride(ws, 0, 1 if scales is not None else 4)
    k_stride = stride(ws, 1, 1 if scales is not None else 4)
    x_stride, out_stride = stride(xs, 0, 4), stride(outs, 0, 4)

    def vector(data, offset):  # data[offset : offset + LANES] as one vector (any alignment)
        pointer_type = ir.VectorType(data.type.pointee, LANES).as_pointer()
        return builder.load(builder.bitcast(builder.gep(data, [offset]), pointer_type), align=1)

    def splat(value):  # <value, value, ..., value>
        one = builder.insert_element(ir.Constant(f32xn, None), value, const(0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, LANES), None))

    module = builder.module
    fma = cgutils.get_or_insert_function(
        module, ir.FunctionType(f32xn, [f32xn] * 3), f"llvm.fma.v{LANES}f32"
    )
    i8_ptr = ir.IntType(8).as_pointer()
    prefetch = cgutils.get_or_insert_function(
        module, ir.FunctionType(ir.VoidType(), [i8_ptr, _I32, _I32, _I32]), "llvm.prefetch.p0i8"
    )
    # Column c of the tile (c = 0, LANES, 2 LANES, ...) is lane c % 16 of panel p + c // 16:
    # its k-th weights start at panels.data + (p + c // 16) * panel_stride + k * k_stride
    # + c % 16 (packed: panel_stride = d_in * 16, k_stride = 16).
    cols = range(0, n_panels * PANEL, LANES)
    panel_start = [builder.mul(builder.add(p, const(j)), panel_stride) for j in range(n_panels)]
    w_start = [builder.add(panel_start[c // PANEL], const(c % PANEL)) for c in cols]
    x_row = [builder.mul(builder.add(t0, const(r)), x_stride) for r in range(rows)]  # &x[t0 + r]
    if scales is not None:
        row_scale = [
            vector(scales.data, builder.add(builder.mul(p, const(PANEL)), const(c))) for c in cols
        ]

    def out_vector(r, c):  # &out[t0 + r, 16p + c : 16p + c + LANES]
        row = builder.mul(builder.add(t0, const(r)), out_stride)
        column = builder.add(builder.mul(p, const(PANEL)), const(c))
        return builder.bitcast(
            builder.gep(outs.data, [builder.add(row, column)]), f32xn.as_pointer()
        )

    out_at = [[out_vector(r, c) for c in cols] for r in range(rows)]
    # The accumulators live in stack slots; LLVM promotes them to registers. They start at
    # zero, or, past the first block of k, where the block before left them in out.
    # (A branch, not a select: out is fresh memory, and reading it first would fault its
    # pages in twice, once to read and again to write.)
    acc = [[cgutils.alloca_once(builder, f32xn) for _ in cols] for _ in range(rows)]
    slots_and_places = [
        sp for row in zip(acc, out_at, strict=True) for sp in zip(*row, strict=True)
    ]
    with builder.if_else(builder.icmp_signed("==", k0, const(0))) as (first, later):
        with first:
            for slot, _ in slots_and_places:
                builder.store(ir.Constant(f32xn, None), slot)  # zeros
        with later:
            for slot, where in slots_and_places:
                builder.store(builder.load(where, align=1), slot)
    prefetching = rows >= PREFETCH_ROWS["float32" if scales is None else "int8"]
    hint = [ir.Constant(_I32, v) for v in (0, 3, 1)]  # read, keep in all caches, data
    with cgutils.for_range(builder, builder.sub(k1, k0)) as loop:
        k = builder.add(k0, loop.index)
        k_at = builder.mul(k, k_stride)
        ahead = builder.mul(builder.add(k, const(PREFETCH)), k_stride)
        for start in panel_start if prefetching else ():  # the line PREFETCH steps ahead
            line = builder.gep(ws.data, [builder.add(start, ahead)])
            builder.call(prefetch, [builder.bitcast(line, i8_ptr), *hint])
        w = [vector(ws.data, builder.add(start, k_at)) for start in w_start]
        if scales is not None:  # the weight as float32, exactly as `unpack` computes it
            w = [
                builder.fmul(builder.sitofp(wj, f32xn), sj)
                for wj, sj in zip(w, row_scale, strict=True)
            ]
        for r in range(rows):
            xk = splat(builder.load(builder.gep(xs.data, [builder.add(x_row[r], k)])))
            for slot, wj in zip(acc[r], w, strict=True):
                builder.store(builder.call(fma, [xk, wj, builder.load(slot)]), slot)
    for slot, where in slots_and_places:
        builder.store(builder.load(slot), where, align=1)


@njit(parallel=True, cache=True)
def _matmul_kernel(x, panels, scale, out):
    """out = x @ w.T for the PackedWeight (panels, scale), streaming the panels once per block.

    x (T, d_in) float32 C-contiguous; panels (n_panels, d_in, 16) float32 or int8; scale
    (16 * n_panels,) float32 or None; out (T, 16 * n_panels) float32. The tiles (TILE_PANELS
    panels each) are cut into N_CHUNKS contiguous ranges that prange hands to the threads;
    within a range, every tile is multiplied by all rows of a block of ROW_BLOCK rows,
    TILE_ROWS at a time.
    """
    T, d_in = x.shape
    n_panels = panels.shape[0]
    if T == 1:  # one row: WIDE_PANELS panels at a time (the last few by tiles)
        n_wide = -(-n_panels // WIDE_PANELS)
        n_chunks = min(N_CHUNKS, n_wide)
        for c in prange(n_chunks):
            for u in range(c * n_wide // n_chunks, (c + 1) * n_wide // n_chunks):
                p = WIDE_PANELS * u
                if p + WIDE_PANELS <= n_panels:
                    _row_tile(x, 0, panels, p, 0, d_in, scale, out)
                else:
                    for q in range(p, n_panels, TILE_PANELS):
                        _tile(x, 0, 1, panels, q, 0, d_in, scale, out)
        return
    if T <= FEW_ROWS and scale is None:  # a few float32 rows: FEW_PANELS panels at a time
        n_few = n_panels // FEW_PANELS  # rows are padded to whole pairs of panels
        n_chunks = min(N_CHUNKS, n_few)
        for c in prange(n_chunks):
            for u in range(c * n_few // n_chunks, (c + 1) * n_few // n_chunks):
                _few_rows_tile(x, 0, T, panels, FEW_PANELS * u, 0, d_in, scale, out)
        return
    n_tiles = n_panels // TILE_PANELS
    n_chunks = min(N_CHUNKS, max(n_tiles, 1))
    n_blocks = -(-T // ROW_BLOCK)  # blocks of rows of about equal size, each at most ROW_BLOCK
    for c in prange(n_chunks):
        for b in range(n_blocks):
            r0, r1 = b * T // n_blocks, (b + 1) * T // n_blocks
            # One tile's worth of rows streams each weight once whole; more rows take turns,
            # tile by tile, on each block of K_BLOCK steps of k while it sits in L1.
            k_step = d_in if r1 - r0 <= TILE_ROWS else K_BLOCK
            n_row_tiles = -(-(r1 - r0) // TILE_ROWS)  # of about equal size: 9 rows are 5 + 4
            for j in range(c * n_tiles // n_chunks, (c + 1) * n_tiles // n_chunks):
                for k0 in range(0, d_in, k_step):
                    k1 = min(d_in, k0 + k_step)
                    for i in range(n_row_tiles):
                        t0 = r0 + i * (r1 - r0) // n_row_tiles
                        rows = r0 + (i + 1) * (r1 - r0) // n_row_tiles - t0
                        _tile(x, t0, rows, panels, TILE_PANELS * j, k0, k1, scale, out)


# ------------------------------------------------------------------ the elementwise steps


def rms_norm_rows(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """`model.rms_norm` over the last axis, x / sqrt(mean(x^2) + eps) * (1 + w), on the threads.

    Why a kernel: NumPy makes six passes over x (square, mean, add, sqrt, divide, multiply), on
    one thread; here each row is read twice and written once, and the rows go to the threads.
    Each row is one fixed loop (`_rms_norm_row`), so a row's result does not depend on the
    others: batch invariant. A few rows (decoding) stay on the calling thread: waking the pool
    would cost more than the work.
    """
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (N, d)
    out = np.empty_like(rows)
    kernel = _rms_norm_kernel if rows.size > SERIAL_SIZE else _rms_norm_serial
    kernel(rows, w.astype(np.float32, copy=False), np.float32(eps), out)
    return out.reshape(x.shape)


@njit(fastmath=_FASTMATH, cache=True)
def _rms_norm_row(x, w, eps, out):
    d = x.shape[0]
    squares = np.float32(0.0)
    for j in range(d):
        squares += x[j] * x[j]
    scale = np.float32(1.0) / np.sqrt(squares / np.float32(d) + eps)
    for j in range(d):
        out[j] = x[j] * scale * (np.float32(1.0) + w[j])


@njit(parallel=True, cache=True)
def _rms_norm_kernel(x, w, eps, out):
    for i in prange(x.shape[0]):
        _rms_norm_row(x[i], w, eps, out[i])


@njit(cache=True)
def _rms_norm_serial(x, w, eps, out):
    for i in range(x.shape[0]):
        _rms_norm_row(x[i], w, eps, out[i])


def gelu_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """`model.gelu_tanh(gate) * up` (the MLP's GeGLU), in one pass on the threads.

    0.5 x (1 + tanh(y)) is computed as x / (1 + exp(-2y)), the same function (1 + tanh(y) =
    2 / (1 + exp(-2y))), with `_exp_row`'s exp, which vectorizes: NumPy's version makes nine
    passes on one thread, and libm's exp, called once per element, was most of this kernel's
    time. Elementwise, so batch invariant; a few rows stay on the calling thread.
    """
    gate, up = np.ascontiguousarray(gate), np.ascontiguousarray(up)
    out = np.empty_like(gate)
    (_gelu_gate_kernel if gate.size > SERIAL_SIZE else _gelu_gate_serial)(gate, up, out)
    return out


@njit(fastmath=_FASTMATH, cache=True)
def _gelu_gate_row(gate, up, out, bits):
    minus_two_c = np.float32(-2.0 * np.sqrt(2.0 / np.pi))
    d = gate.shape[0]
    for j in range(d):  # out: -2y, then exp(-2y), then the result, in place
        x = gate[j]
        out[j] = minus_two_c * (x + np.float32(0.044715) * x * x * x)
    _exp_row(out, bits)
    for j in range(d):
        out[j] = gate[j] / (np.float32(1.0) + out[j]) * up[j]


@njit(parallel=True, cache=True)
def _gelu_gate_kernel(gate, up, out):
    for i in prange(gate.shape[0]):
        _gelu_gate_row(gate[i], up[i], out[i], np.empty(gate.shape[1], np.int32))


@njit(cache=True)
def _gelu_gate_serial(gate, up, out):
    bits = np.empty(gate.shape[1], np.int32)
    for i in range(gate.shape[0]):
        _gelu_gate_row(gate[i], up[i], out[i], bits)


def rope_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """`model.rope`'s rotation, given its angles: x (T, n_heads, d), cos and sin (T, d/2).

    The same products and sums in the same order, with no fused multiply-add, so the same
    bits as `model.rope`; one pass instead of NumPy's eight calls, which at T = 1 cost more
    than the arithmetic. Elementwise per position, so batch invariant.
    """
    T, n_heads, d = x.shape
    if d % 2 or cos.shape != (T, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"rope_rows: x {x.shape} needs cos and sin (T, d/2), got {cos.shape}")
    out = np.empty((T, n_heads, d), np.float32)
    _rope_kernel(np.ascontiguousarray(x, np.float32), cos, sin, out)
    return out


@njit(cache=True)
def _rope_kernel(x, cos, sin, out):
    T, n_heads, d = x.shape
    half = d // 2
    for t in range(T):
        for h in range(n_heads):
            for i in range(half):
                x1, x2 = x[t, h, i], x[t, h, half + i]
                out[t, h, i] = x1 * cos[t, i] - x2 * sin[t, i]
                out[t, h, half + i] = x2 * cos[t, i] + x1 * sin[t, i]


@njit(fastmath=_FASTMATH, cache=True)
def _exp_row(a, bits):
    """a[:] = exp(a[:]) in place, in float32, within about 1 ulp; bits: int32 scratch, len(a).

    Why not np.exp: without Intel's SVML, Numba calls libm's expf once per element, which
    LLVM cannot vectorize. This is Cephes' expf, written so that it can: exp(x) = 2^k e^r with
    k = round(x / ln 2) and r = x - k ln 2 (ln 2 in two parts, so r is exact), e^r by a degree-6
    polynomial on |r| <= ln(2)/2, and 2^k made directly from its bits, (k + 127) << 23, in
    `bits` seen as float32. x is clamped to [-87, 88], where 2^k is a normal float32 (so
    exp(-100) is about 1.6e-38, not 0). NaN stays NaN. The same bits for the same x wherever it
    sits in a row: elementwise.
    """
    n = a.shape[0]
    for i in range(n):
        x = min(max(a[i], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        a[i] = p * r * r + r + np.float32(1.0)
        bits[i] = (np.int32(k) + np.int32(127)) << 23
    two_to_k = bits.view(np.float32)
    for i in range(n):
        a[i] *= two_to_k[i]


# ------------------------------------------------------------------ attention over the KV cache


def attend_each(
    q: np.ndarray, keys: np.ndarray, values: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """For each query t: softmax(q_t K^T) V over the cache rows seen[t, 0] <= s < seen[t, 1].

    The arithmetic of `model.attend` (grouped-query attention), for the queries of decoding,
    verification and prompts alike. q (T, n_heads, head_dim), scaled; keys and values
    (capacity, n_kv_heads, head_dim): one layer's cache; seen (T, 2) int: the visible key rows
    of each query (causal mask and sliding window). Returns (T, n_heads, head_dim).

    Both products are the register tile's, so each output is one fixed FMA chain:
      - scores: the keys are the rows and the queries the columns, K_g @ Q_g^T, with one column
        per (query, head of the group g): each key row is loaded once for every query head that
        shares it (Gemma 3: 4 heads, 1 key/value head). The columns go TILE_COLS at a time,
        each block over the keys its queries see, from the first to the last;
      - softmax, per column over exactly its visible keys; the probabilities of the block's
        other keys are 0;
      - P V, over the block's keys: a probability of exactly 0 is an exact no-op in an FMA chain,
        so a query's outputs are the same bits whichever block, and whichever other queries,
        it came with: batch invariant, like `linear`. Then each row is divided by its sum.
    Why a kernel: in NumPy each query costs 8 small calls, mostly call overhead; a long prompt's
    causal triangle is mostly arithmetic, which the tile does at its full speed, with the
    blocks handed to the threads by their number of keys (docs/probes/attention_kernel.py).
    """
    T, n_heads, head_dim = q.shape
    n_kv = keys.shape[1]
    if keys.shape[2] != head_dim or n_heads % n_kv != 0 or seen.shape != (T, 2):
        raise ValueError(
            f"attend_each: q {q.shape}, keys {keys.shape} and seen {seen.shape} do not fit together"
        )
    group = n_heads // n_kv
    pad = -head_dim % TILE_COLS  # P V's columns are the head's dimensions: whole tiles too
    if pad:  # (tiny models only: Gemma's 256 dimensions are 8 tiles)
        values = np.concatenate([values, np.zeros((*values.shape[:2], pad), np.float32)], axis=2)
    out = np.empty((T, n_heads, head_dim), np.float32)
    vt = as_panels(values.transpose(1, 0, 2))  # (n_kv, d/16, capacity, 16), no copy
    if T * group > 4 * TILE_COLS:  # many blocks read the values: a copy in panels pays for itself
        vt = np.ascontiguousarray(vt[:, :, : int(seen[:, 1].max())])  # steps of k 64 B apart
    one_chunk = keys.shape[1] * -(-T * group // TILE_COLS) == 1  # decoding: one unit of work
    kernel = _attend_serial if one_chunk else _attend_kernel
    kernel(keys, np.ascontiguousarray(q), vt, seen.astype(np.int64), out)
    return out


def as_panels(a: np.ndarray) -> np.ndarray:
    """A (..., K, N) matrix seen as the tile's panels (..., N/16, K, 16), without a copy.

    Lane l of panel p at step k is a[..., k, 16p + l]: a row-major matrix multiplies x as
    x @ a, where a PackedWeight w multiplies it as x @ w.T. The last axis must be contiguous.
    """
    *batch, K, N = a.shape
    if a.dtype != np.float32 or a.strides[-1] != 4 or N % PANEL:
        raise ValueError(f"as_panels: needs float32 (..., K, 16n), last axis contiguous: {a.shape}")
    shape, strides = (*batch, N // PANEL, K, PANEL), (*a.strides[:-2], 4 * PANEL, a.strides[-2], 4)
    return np.lib.stride_tricks.as_strided(a, shape, strides)


@njit(fastmath=_FASTMATH, cache=True)
def _attend_plan(keys, seen, out):
    """`attend_each`'s work, cut into units and the units into chunks for the threads.

    Unit u is (key/value head g, block b of TILE_COLS columns), u = g * n_blocks + b, with one
    column per (query, head of its group). Block b needs the keys lo[b] <= s < hi[b]. The
    units are cut into at most N_ATTENTION_CHUNKS ranges first[c] <= u < first[c + 1] of about
    equal numbers of keys (a prompt's causal triangle gives the last queries the most).
    """
    T, n_heads, head_dim = out.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    n_cols = T * group
    n_blocks = -(-n_cols // TILE_COLS)
    lo = np.full(n_blocks, keys.shape[0], np.int64)
    hi = np.zeros(n_blocks, np.int64)
    for c in range(n_cols):
        b, t = c // TILE_COLS, c // group
        lo[b], hi[b] = min(lo[b], seen[t, 0]), max(hi[b], seen[t, 1])
    n_units = n_kv * n_blocks
    work = np.zeros(n_units + 1, np.int64)  # keys of the units before u, + 32 fixed for each
    for u in range(n_units):
        work[u + 1] = work[u] + hi[u % n_blocks] - lo[u % n_blocks] + 32
    n_chunks = min(n_units, N_ATTENTION_CHUNKS)
    first = np.searchsorted(work, np.arange(n_chunks + 1) * work[n_units] // n_chunks)
    first[n_chunks] = n_units
    return lo, hi, first


@njit(parallel=True, cache=True)
def _attend_kernel(keys, q, vt, seen, out):
    """`attend_each`'s units, chunk by chunk on the threads (`_attend_plan`, `_attend_units`)."""
    lo, hi, first = _attend_plan(keys, seen, out)
    for chunk in prange(first.shape[0] - 1):
        _attend_units(keys, q, vt, seen, out, lo, hi, first[chunk], first[chunk + 1])


@njit(cache=True)
def _attend_serial(keys, q, vt, seen, out):
    """`_attend_kernel` on the calling thread: for one chunk (decoding), waking the pool costs
    more than it saves. The same units, so the same bits."""
    lo, hi, first = _attend_plan(keys, seen, out)
    for chunk in range(first.shape[0] - 1):
        _attend_units(keys, q, vt, seen, out, lo, hi, first[chunk], first[chunk + 1])


@njit(fastmath=_FASTMATH, cache=True)
def _attend_units(keys, q, vt, seen, out, lo, hi, u0, u1):
    """`attend_each`'s three steps for the units u0 <= u < u1 (`_attend_plan`).

    keys (capacity, n_kv, d); q (T, n_heads, d); vt (n_kv, d_padded / 16, capacity, 16): the
    values' panels; out (T, n_heads, d). Each block's queries are first copied into panels of
    16 columns, k-major, like a packed weight: qb[j // 16, d, j % 16] = q[t, h, d] for column j
    of the block, (t, h) = divmod(c, group) with c = TILE_COLS b + j.
    """
    T, n_heads, head_dim = out.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    n_cols = T * group
    n_blocks = lo.shape[0]
    longest = np.max(hi - lo)
    scores = np.empty((longest, TILE_COLS), np.float32)  # (keys, columns)
    p = np.empty((TILE_COLS, longest), np.float32)  # (columns, keys)
    o = np.empty((TILE_COLS, vt.shape[1] * PANEL), np.float32)  # (columns, d_padded)
    total = np.empty(TILE_COLS, np.float32)  # each column's sum of probabilities
    bits = np.empty(longest, np.int32)  # `_exp_row`'s scratch
    q_b = np.zeros((TILE_PANELS, head_dim, PANEL), np.float32)  # the block's query panels
    for u in range(u0, u1):
        g, b = u // n_blocks, u % n_blocks
        s0, n = lo[b], hi[b] - lo[b]
        cols = min(TILE_COLS, n_cols - b * TILE_COLS)
        k_g = keys[s0 : s0 + n, g, :]
        for j in range(TILE_COLS):  # zeros past the last column: whole panels
            c = b * TILE_COLS + j
            for d in range(head_dim):
                q_b[j // PANEL, d, j % PANEL] = (
                    0.0 if j >= cols else q[c // group, g * group + c % group, d]
                )
        for r in range(0, n, TILE_ROWS):  # scores[s, j] = k_s . q_j
            _tile(k_g, r, min(TILE_ROWS, n - r), q_b, 0, 0, head_dim, None, scores)
        for j in range(cols):  # softmax over the keys column j sees, 0 for the others
            t = (b * TILE_COLS + j) // group
            a, z = seen[t, 0] - s0, seen[t, 1] - s0
            p[j, :n] = 0.0
            top = np.float32(-np.inf)
            for s in range(a, z):  # the column into a row, where exp vectorizes
                p[j, s] = scores[s, j]
                top = max(top, p[j, s])
            for s in range(a, z):  # shifted by the max so that exp never overflows
                p[j, s] = p[j, s] - top
            _exp_row(p[j, a:z], bits[: z - a])
            total[j] = 0.0
            for s in range(a, z):
                total[j] += p[j, s]
        for e in range(vt.shape[1] // TILE_PANELS):  # o = p @ v, TILE_COLS dimensions at a time
            v_e = vt[g, TILE_PANELS * e : TILE_PANELS * (e + 1), s0 : s0 + n]
            o_e = o[:, e * TILE_COLS : (e + 1) * TILE_COLS]
            for r in range(0, cols, TILE_ROWS):
                _tile(p, r, min(TILE_ROWS, cols - r), v_e, 0, 0, n, None, o_e)
        for j in range(cols):
            c = b * TILE_COLS + j
            t, h = c // group, g * group + c % group
            for d in range(head_dim):
                out[t, h, d] = o[j, d] / total[j]


# ------------------------------------------------------- a sampling distribution from one row


def distribution_row(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, out: np.ndarray
) -> None:
    """out[:] = `sampling.numpy_distribution`'s row in float64, with no sort over the vocabulary.

    The reference sorts or partitions all 262,144 probabilities for top-k and top-p. Here:
      1. the largest logit (NumPy's max, which also catches NaN);
      2. on the threads: e_i = exp((l_i - max) / T) with `_exp64_block`'s vectorized exp, and
         their sum; when top-k or top-p is on, also a histogram of the logits in BUCKETS bins
         from the largest down, with each bin's count (top-k) or mass (top-p alone);
      3. the edge (`_find_cut`): with top-k, the counts find the bin of the k-th token, and
         the tokens of the bins down to it are sorted and walked for top-p; with top-p alone,
         the masses find the bin where the mass before a token reaches top_p, and only that
         bin's tokens are sorted. Sorted by logit then id, as the reference sorts, so the kept
         set is exactly the reference's: the tokens up to a cut (logit, id). On the threads
         again, out = e / (the kept tokens' sum of e) up to the cut, 0 after it.
    exp is monotone, so ordering by logit is ordering by probability. The row is cut into
    N_ROW_CHUNKS fixed ranges whose sums are added in a fixed order: the same bits whatever the
    number of threads. logits: (vocab,) float32 or float64; temperature > 0.
    """
    hi = float(logits.max())
    if not hi < np.inf:
        raise ValueError("the logits contain NaN or +inf: no distribution can be made from them")
    if hi == -np.inf:
        raise ValueError("every logit is -inf: no token has any probability")
    vocab = logits.shape[0]
    cut_on = 0 < top_k < vocab or top_p < 1.0
    scale = 0.0
    if cut_on:
        lo = float(logits.min())
        if lo == -np.inf:  # masked tokens (a cheap head's unscored ones) have a bin of their own
            lo = float(logits[logits > -np.inf].min())
        scale = (BUCKETS - 1) / (hi - lo) if hi > lo else 0.0
    mass = np.zeros((N_ROW_CHUNKS, BUCKETS + 1 if cut_on else 1))
    count = np.zeros((N_ROW_CHUNKS, BUCKETS + 1 if 0 < top_k < vocab else 0), np.int64)
    bins = np.empty(vocab if cut_on else 0, np.int16)
    _exp_kernel(logits, hi, temperature, scale, out, mass, count, bins)
    if not cut_on:
        _scale_kernel(logits, -np.inf, vocab, 1.0 / mass[:, 0].sum(), out)  # every token kept
        return
    cut_logit, cut_id, kept_mass = _find_cut(logits, out, bins, mass, count, top_k, top_p)
    _scale_kernel(logits, cut_logit, cut_id, 1.0 / kept_mass, out)


BUCKETS = 2048  # the histogram's bins: the one that holds the edge has few tokens to sort
N_ROW_CHUNKS = 8  # a row's fixed ranges for the threads
BLOCK64 = 256  # `_exp_kernel` goes through its range this many logits at a time (in L1)


@njit(parallel=True, cache=True)
def _exp_kernel(logits, hi, temperature, scale, out, mass, count, bins):
    """Pass 2 on the threads, chunk by chunk (`_exp_chunk`)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    cut_on = bins.shape[0] > 0
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        chunk_bins = bins[a:b] if cut_on else bins
        _exp_chunk(logits[a:b], hi, temperature, scale, out[a:b], mass[c], count[c], chunk_bins)


@njit(cache=True)
def _exp_chunk(logits, hi, temperature, scale, out, mass, count, bins):
    """out = exp((logits - hi) / T); its sum in mass[0] or, when bins has room (top-k or top-p
    on), each logit's bin in bins and each bin's count (top-k on: count has room) or mass (top-p
    alone). BLOCK64 logits at a time, so that each pass over a block finds it in L1. (The
    chunk's arrays are slices whose indices start at 0, which lets LLVM vectorize the loops.)"""
    scratch = np.empty((2, BLOCK64), np.int64)
    cut_on, counting = bins.shape[0] > 0, count.shape[0] > 0
    for b0 in range(0, logits.shape[0], BLOCK64):
        b1 = min(b0 + BLOCK64, logits.shape[0])
        block = out[b0:b1]
        _shift_and_scale(logits[b0:b1], hi, 1.0 / temperature, block)
        _exp64_block(block, scratch)
        if not cut_on:
            mass[0] += _sum(block)
            continue
        _bin_block(logits[b0:b1], hi, scale, bins[b0:b1])
        if counting:  # top-k finds its edge by counts
            for i in range(b0, b1):
                count[bins[i]] += 1
        else:  # top-p alone, by mass
            for i in range(b0, b1):
                mass[bins[i]] += out[i]


@njit(cache=True)
def _shift_and_scale(logits, hi, inverse_temperature, out):
    """out = (logits - hi) / T in float64, as a product: a division costs several times more
    (the result may differ from the quotient in its last bit)."""
    for i in range(logits.shape[0]):
        out[i] = (np.float64(logits[i]) - hi) * inverse_temperature


@njit(fastmath={"contract"}, cache=True)
def _exp64_block(a, bits):
    """a[:] = exp(a[:]) in place, float64, for a <= 0, within about 1 ulp of np.exp.

    `_exp_row`'s method in double precision: exp(x) = 2^k e^r, k = round(x / ln 2), r = x -
    k ln 2 (ln 2 in two parts, fdlibm's, so r is exact), e^r by its Taylor series to r^13 on
    |r| <= ln(2)/2 (the next term is below 1e-17), and 2^k made from its bits. x is clamped to
    -746, below which exp is 0 in float64; 2^k is made as two powers of two, so that the
    subnormal results between e^-745 and e^-708 come out too. bits: int64 scratch (2, len(a)).
    """
    n = a.shape[0]
    for i in range(n):
        x = a[i] if a[i] > -746.0 else -746.0
        k = np.floor(x * 1.4426950408889634 + 0.5)
        r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        a[i] = (p * r + 1.0) * r + 1.0
        k0 = np.int64(k)
        k1 = k0 if k0 > -1000 else -1000
        bits[0, i] = (k1 + 1023) << 52
        bits[1, i] = (k0 - k1 + 1023) << 52
    powers = bits.view(np.float64)
    for i in range(n):
        a[i] = a[i] * powers[0, i] * powers[1, i]


@njit(fastmath=_FASTMATH, cache=True)
def _sum(a):
    """sum(a), vectorized: the order is fixed by the compiled code, so the same a gives the
    same bits every time."""
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i]
    return total


@njit(cache=True)
def _bin_block(logits, hi, scale, bins):
    """Each logit's histogram bin: 0 holds the largest, BUCKETS the -inf ones."""
    for i in range(logits.shape[0]):
        v = np.float64(logits[i])
        b = (hi - v) * scale if v > -np.inf else BUCKETS
        bins[i] = np.int16(b if b < BUCKETS - 1 else BUCKETS - 1) if v > -np.inf else BUCKETS


@njit(cache=True)
def _find_cut(logits, e, bins, mass_c, count_c, top_k, top_p):
    """Pass 3's edge: (cut logit, cut id, the kept tokens' mass). Token i is kept iff it comes
    no later than the cut in the reference's order: a larger logit, or the same and id <= cut id.
    """
    n = logits.shape[0]
    if 0 < top_k < n:
        # top-k: the bins down to the one holding the k-th token, sorted; every token at least
        # as large as the k-th is kept (ties too), then top-p walks them in order
        count = np.zeros(count_c.shape[1], np.int64)  # the chunks' counts, in a fixed order
        for c in range(count_c.shape[0]):
            count += count_c[c]
        seen, b = 0, 0
        while seen + count[b] < top_k:
            seen += count[b]
            b += 1
        ids = _bin_members(logits, bins, 0, b)
        cut_logit = np.float64(logits[ids[top_k - 1]])
        kept_mass = 0.0
        for i in ids:
            if np.float64(logits[i]) < cut_logit:
                break
            kept_mass += e[i]
        if top_p >= 1.0:
            return cut_logit, n, kept_mass
        return _walk_top_p(logits, e, ids, cut_logit, top_p * kept_mass, 0.0, n)
    # top-p alone: the bins' masses find the bin where the mass before a token reaches
    # top_p * total; only that bin's tokens are sorted
    mass = np.zeros(mass_c.shape[1])  # the chunks' histograms, added in a fixed order
    for c in range(mass_c.shape[0]):
        mass += mass_c[c]
    threshold, before, b = top_p * mass.sum(), 0.0, 0
    while b < BUCKETS and before + mass[b] < threshold:
        before += mass[b]
        b += 1
    ids = _bin_members(logits, bins, b, b)
    return _walk_top_p(logits, e, ids, -np.inf, threshold, before, n)


@njit(cache=True)
def _walk_top_p(logits, e, ids, cut_logit, threshold, before, n):
    """Walk ids (sorted) keeping each token while the mass before it, starting at `before`, is
    below the threshold (and its logit is not below cut_logit): (cut logit, cut id, kept mass)."""
    last = -1
    for i in ids:
        if before >= threshold or np.float64(logits[i]) < cut_logit:
            break
        last, before = i, before + e[i]
    if last < 0:  # rounding walked past every bin: everything (that top-k kept) stays
        return cut_logit, n, before
    return np.float64(logits[last]), last, before


@njit(parallel=True, cache=True)
def _bin_members(logits, bins, b0, b1):
    """The ids in bins b0..b1, sorted by logit from the largest, ties by id (the reference's
    order)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    first = np.zeros(N_ROW_CHUNKS + 1, np.int64)  # where each chunk's members go
    for c in prange(N_ROW_CHUNKS):
        first[c + 1] = _count_in_chunk(bins[c * step : min(n, (c + 1) * step)], b0, b1)
    first = np.cumsum(first)
    ids = np.empty(first[N_ROW_CHUNKS], np.int64)
    for c in prange(N_ROW_CHUNKS):
        chunk = bins[c * step : min(n, (c + 1) * step)]
        _find_in_chunk(chunk, b0, b1, c * step, ids[first[c] :])
    values = np.empty(ids.shape[0])
    for j in range(ids.shape[0]):
        values[j] = -np.float64(logits[ids[j]])
    return ids[np.argsort(values, kind="mergesort")]  # stable: equal logits stay in id order


@njit(cache=True)
def _count_in_chunk(bins, b0, b1):
    n = 0
    for i in range(bins.shape[0]):
        n += (bins[i] >= b0) & (bins[i] <= b1)
    return n


@njit(cache=True)
def _find_in_chunk(bins, b0, b1, offset, ids):
    j = 0
    for i in range(bins.shape[0]):
        if b0 <= bins[i] <= b1:
            ids[j] = offset + i
            j += 1


@njit(parallel=True, cache=True)
def _scale_kernel(logits, cut_logit, cut_id, factor, out):
    """Pass 3 on the threads: out[i] *= factor up to the cut, 0 after it (`_scale_chunk`)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        _scale_chunk(logits[a:b], cut_logit, cut_id - a, factor, out[a:b])


@njit(cache=True)
def _scale_chunk(logits, cut_logit, cut_id, factor, out):
    for i in range(logits.shape[0]):
        v = np.float64(logits[i])
        keep = (v > cut_logit) | ((v == cut_logit) & (i <= cut_id))  # no branch: it vectorizes
        out[i] = out[i] * (factor * keep)


def sample_row(probs: np.ndarray, u: float) -> int:
    """The token where the cumulative sum of probs first exceeds u * sum(probs): an inverse-CDF
    draw for u ~ U[0, 1), as `sampling.numpy_sample` does with NumPy's cumsum over the whole
    row, here by chunks: each chunk's sum first, then a running sum inside the one chunk where
    the draw lands. Never a token of probability 0. probs: (vocab,) float64, not all 0."""
    return int(_sample_kernel(np.ascontiguousarray(probs, np.float64), float(u)))


@njit(cache=True)
def _sample_kernel(probs, u):
    n = probs.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    sums = np.zeros(N_ROW_CHUNKS)
    for c in range(N_ROW_CHUNKS):
        sums[c] = _sum(probs[c * step : min(n, (c + 1) * step)])
    target, before, last = u * sums.sum(), 0.0, -1
    for c in range(N_ROW_CHUNKS):
        if before + sums[c] <= target:  # the draw lies past this chunk
            before += sums[c]
            continue
        for i in range(c * step, min(n, (c + 1) * step)):
            if probs[i] > 0.0:
                last = i
                before += probs[i]
                if before > target:
                    return i
    for i in range(n - 1, -1, -1):  # rounding left the draw past the end: the last token
        if probs[i] > 0.0:
            return i
    return last


def top_n(values: np.ndarray, n: int) -> np.ndarray:
    """The ids of the n largest values, largest first, ties by id: the trace's "top few".

    One pass per chunk on the threads, each keeping its n best in a small sorted list (most
    values fail the first comparison), then the chunks' lists merged. An argpartition of
    262,144 values took milliseconds; this takes a fraction of one."""
    values = np.ascontiguousarray(values)
    n = max(0, min(n, values.shape[0]))
    return _top_n_kernel(values, n) if n else np.empty(0, np.int64)


@njit(parallel=True, cache=True)
def _top_n_kernel(values, n):
    size = values.shape[0]
    step = -(-size // N_ROW_CHUNKS)
    best = np.full((N_ROW_CHUNKS, n), -1, np.int64)
    for c in prange(N_ROW_CHUNKS):
        _top_n_chunk(values[c * step : min(size, (c + 1) * step)], c * step, best[c])
    ids = best.reshape(-1)
    ids = ids[ids >= 0]  # (chunks shorter than n leave -1)
    keys = np.empty(ids.shape[0])
    for j in range(ids.shape[0]):
        keys[j] = -np.float64(values[ids[j]])
    order = np.argsort(ids)  # id order first, so the stable sort below breaks ties by id
    ids, keys = ids[order], keys[order]
    return ids[np.argsort(keys, kind="mergesort")][:n]


@njit(cache=True)
def _top_n_chunk(values, offset, best):
    """best[:] = the ids of values' n largest, largest first, ties by id (-1 while unfilled)."""
    n, filled = best.shape[0], 0
    for i in range(values.shape[0]):
        v = values[i]
        if filled == n and not v > values[best[n - 1] - offset]:
            continue  # not above the n-th best (an equal value has a larger id: it loses)
        j = filled if filled < n else n - 1  # insert, shifting the smaller ones down
        while j > 0 and v > values[best[j - 1] - offset]:
            best[j] = best[j - 1]
            j -= 1
        best[j] = offset + i
        filled = min(filled + 1, n)
