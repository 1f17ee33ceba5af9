"""Weights packed once, at load, into the panels the register tile streams (`matmul`).

A weight is cut into panels of 16 rows and each panel is stored k-major:
`panels[p, k, l] = w[16p + l, k]`. Walking k through a panel then meets, at each k, the 16
weights of 16 output columns side by side in one 64-byte cache line: one AVX-512 register, or
two AVX2 ones. BLAS packs on every call; we pack once (`pack`).

Int8 weights
    `quantize_int8` stores each weight row as int8 with one float32 scale (symmetric,
    scale = max|row| / 127), in the same panels. The tile loads LANES int8 weights (a quarter
    of the bytes of float32), converts them to float32 and multiplies them by their rows'
    scales: exactly the values `unpack` gives, so the result equals
    `linear(x, pack(unpack(wq)))` bit for bit and decoding reads a quarter of the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PANEL = 16  # weight rows per panel: at each k, 16 float32 weights = one 64-byte cache line
PAD_ROWS = 2 * PANEL  # rows are padded to whole pairs of panels, the widest tile


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
