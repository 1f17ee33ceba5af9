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
    BLAS packs on every call; we pack once, when the model is loaded (`packing.pack`): panels
    of 16 rows, k-major, so that at each k the 16 weights of 16 output columns sit side by side
    in one 64-byte cache line: one AVX-512 register, or two AVX2 ones. The register
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

A plain NumPy matrix still works: `linear(x, w)` with an ndarray is `x @ w.T` through BLAS,
the reference the kernel is tested against (and what `minispec bench` reports as "NumPy only").

Why the tile is written in LLVM IR
    Numba has no vector type, and LLVM keeps scalar accumulators in registers but not small
    arrays. `_tile` therefore writes the loop above directly as LLVM IR (up to 24 vector
    accumulators, `llvm.fma.v16f32` or `.v8f32`), one copy per row count behind a `switch`.
    Everything around it is ordinary Numba.

The tile is also the one of attention's two products (`attention`), and its shape (TILE_COLS,
TILE_ROWS) is what attention's blocks follow.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from minispec.kernels.packing import PAD_ROWS, PANEL, PackedWeight


def _vector_lanes() -> int:
    """float32 lanes of the widest vector register Numba compiles for: 16 with AVX-512, else 8.

    Numba compiles for this machine's CPU unless NUMBA_CPU_FEATURES says otherwise; so do we.
    """
    features = numba.config.CPU_FEATURES
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return 16 if "+avx512f" in features.split(",") else 8


LANES = _vector_lanes()
# The register tile: 32 registers with AVX-512 hold 12 rows x 2 vectors of accumulators, the
# 16 of AVX2 hold 6 x 2 (each leaves room for the 2 weight vectors and 1 broadcast input).
TILE_PANELS, TILE_ROWS = (2, 12) if LANES == 16 else (1, 6)
TILE_COLS = TILE_PANELS * PANEL  # output columns per tile: 32 or 16
# One row alone (decoding) goes through WIDE_PANELS panels at a time: 8 accumulators either way
WIDE_PANELS = 8 if LANES == 16 else 4
# A few float32 rows (verifying k <= 2 drafts) on AVX2 go through 2 panels at a time: 3 rows
# x 2 panels x 2 vectors = 12 accumulators, where TILE_PANELS = 1 keeps only 2 per row busy
# (faster for float32, not for int8: docs/benchmarks.md, "A few float32 rows through two
# panels"). AVX-512's tile has 2 panels already: FEW_ROWS = 0 turns this off there.
FEW_PANELS, FEW_ROWS = 2, (0 if LANES == 16 else 3)
PREFETCH = 64  # the tile asks for each panel's weights 64 steps of k ahead (4 KB in float32)
# ... when it has this many rows or more (float32, one row: the hardware keeps up alone)
PREFETCH_ROWS = {"float32": 2, "int8": 1}
K_BLOCK = 128  # ... more rows than one tile take turns on 128 steps of k at a time
ROW_BLOCK = 48  # a long prompt's rows go through the weight 48 at a time (they stay in L2)
N_CHUNKS = 64  # contiguous ranges of tiles handed to the threads by prange


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


ONE_ROW, FEW_ROWS_TILE, ROW_TILES = 0, 1, 2  # the paths `matmul_path` chooses


@njit(cache=True)
def matmul_path(T: int, int8: bool) -> int:
    """Which tile a product of T rows takes: ONE_ROW (decoding: `_row_tile`, WIDE_PANELS panels
    at a time), FEW_ROWS_TILE (AVX2, a few float32 rows: `_few_rows_tile`, FEW_PANELS panels at a
    time) or ROW_TILES (`_tile`, TILE_ROWS rows at a time, in blocks of k and of rows)."""
    if T == 1:
        return ONE_ROW
    if T <= FEW_ROWS and not int8:
        return FEW_ROWS_TILE
    return ROW_TILES


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
    path = matmul_path(T, scale is not None)
    if path == ONE_ROW:  # WIDE_PANELS panels at a time (the last few by tiles)
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
    if path == FEW_ROWS_TILE:  # FEW_PANELS panels at a time
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
