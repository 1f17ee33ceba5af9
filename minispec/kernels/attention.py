"""Attention over the KV cache has a kernel too (`attend_each`): `model.attend`'s arithmetic, its
two products done by the same tile (which follows its arrays' strides, so it also reads a
row-major matrix or the cache in place, `as_panels`), batch invariant for the same reason.

Which compiled variant a call takes is decided by two named tests, `one_unit` (one thread or
the pool) and `copies_values` (the values read in place or copied into panels);
`attention_variant` names the combination, and `variants.warmup` compiles every one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minispec.kernels.matmul import TILE_COLS, TILE_PANELS, TILE_ROWS, _tile
from minispec.kernels.packing import PANEL
from minispec.kernels.pointwise import _exp_row, ordered_sum

N_ATTENTION_CHUNKS = 16  # contiguous ranges of attention's column blocks, handed to the threads


def one_unit(T: int, group: int, n_kv: int) -> bool:
    """Whether T queries (group query heads per key/value head, n_kv such heads) are one unit of
    work: decoding's case, done on the calling thread, where waking the pool costs more than it
    saves. A unit is one key/value head and one block of TILE_COLS columns (query, head)."""
    return n_kv * -(-T * group // TILE_COLS) == 1


def copies_values(T: int, group: int) -> bool:
    """Whether the values are copied into panels first: when many blocks of columns (more than
    4) read them, a copy whose steps of k are 64 bytes apart pays for itself."""
    return T * group > 4 * TILE_COLS


def pads_head(head_dim: int) -> bool:
    """Whether the head's dimensions are padded to whole tiles for P V (tiny models only:
    Gemma's 256 dimensions are 8 tiles)."""
    return head_dim % TILE_COLS != 0


def attention_variant(T: int, n_heads: int, n_kv: int, head_dim: int) -> str:
    """The compiled variant `attend_each` takes for these shapes, by the tests above."""
    group = n_heads // n_kv
    threads = "one thread" if one_unit(T, group, n_kv) else "the pool"
    values = "values copied" if copies_values(T, group) else "values in place"
    head = "head padded" if pads_head(head_dim) else "head of whole tiles"
    return f"{threads}, {values}, {head}"


def attend_each(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    seen: np.ndarray,
    base: int | None = None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """For each query t: softmax(q_t K^T) V over the cache rows seen[t, 0] <= s < seen[t, 1].

    A token tree (`model.TreeMask`) hides some rows of that range: from row `base` on, query t
    sees row s only where visible[t, s - base] (its ancestors and itself); rows before `base`
    (the prefix) as `seen` says. base None: no tree, every row of the range.

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
    if pads_head(head_dim):  # P V's columns are the head's dimensions: whole tiles too
        pad = -head_dim % TILE_COLS
        values = np.concatenate([values, np.zeros((*values.shape[:2], pad), np.float32)], axis=2)
    out = np.empty((T, n_heads, head_dim), np.float32)
    vt = as_panels(values.transpose(1, 0, 2))  # (n_kv, d/16, capacity, 16), no copy
    if copies_values(T, group):
        vt = np.ascontiguousarray(vt[:, :, : int(seen[:, 1].max())])  # steps of k 64 B apart
    if visible is None:  # no tree: every row of the range (one dummy cell, never read)
        base, visible = keys.shape[0], np.ones((T, 1), np.bool_)
    elif visible.shape[0] != T or base + visible.shape[1] < seen[:, 1].max():
        raise ValueError(f"attend_each: a tree mask {visible.shape} from row {base} misses rows")
    kernel = _attend_serial if one_unit(T, group, n_kv) else _attend_kernel
    args = seen.astype(np.int64), np.int64(base), np.ascontiguousarray(visible, np.bool_)
    kernel(keys, np.ascontiguousarray(q), vt, *args, out)
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


@njit(cache=True)
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
def _attend_kernel(keys, q, vt, seen, base, visible, out):
    """`attend_each`'s units, chunk by chunk on the threads (`_attend_plan`, `_attend_units`)."""
    lo, hi, first = _attend_plan(keys, seen, out)
    for chunk in prange(first.shape[0] - 1):
        u0, u1 = first[chunk], first[chunk + 1]
        _attend_units(keys, q, vt, seen, base, visible, out, lo, hi, u0, u1)


@njit(cache=True)
def _attend_serial(keys, q, vt, seen, base, visible, out):
    """`_attend_kernel` on the calling thread: for one chunk (decoding), waking the pool costs
    more than it saves. The same units, so the same bits."""
    lo, hi, first = _attend_plan(keys, seen, out)
    for chunk in range(first.shape[0] - 1):
        u0, u1 = first[chunk], first[chunk + 1]
        _attend_units(keys, q, vt, seen, base, visible, out, lo, hi, u0, u1)


@njit(cache=True)
def _attend_units(keys, q, vt, seen, base, visible, out, lo, hi, u0, u1):
    """`attend_each`'s three steps for the units u0 <= u < u1 (`_attend_plan`).

    keys (capacity, n_kv, d); q (T, n_heads, d); vt (n_kv, d_padded / 16, capacity, 16): the
    values' panels; base and visible: the tree mask (`attend_each`); out (T, n_heads, d). Each
    block's queries are first copied into panels of 16 columns, k-major, like a packed weight:
    qb[j // 16, d, j % 16] = q[t, h, d] for column j of the block, (t, h) = divmod(c, group)
    with c = TILE_COLS b + j.
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
    row = np.empty(longest, np.float32)  # one column's visible scores, side by side
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
            m = 0  # the visible keys, gathered into a row where exp vectorizes: a tree's
            for s in range(a, z):  # query then sums exactly the numbers its path's decoding did
                if s + s0 < base or visible[t, s + s0 - base]:
                    row[m] = scores[s, j]
                    m += 1
            top = np.float32(-np.inf)
            for s in range(m):
                top = max(top, row[s])
            for s in range(m):  # shifted by the max so that exp never overflows
                row[s] = row[s] - top
            _exp_row(row[:m], bits[:m])
            total[j] = ordered_sum(row[:m])
            p[j, :n] = 0.0
            m = 0
            for s in range(a, z):  # back in the keys' order; a hidden key's 0 is a no-op below
                if s + s0 < base or visible[t, s + s0 - base]:
                    p[j, s] = row[m]
                    m += 1
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
