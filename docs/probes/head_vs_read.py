"""The output head for T rows against a plain streaming read of the same 671 MB matrix.

`python docs/probes/head_vs_read.py int8`: the head in int8 (168 MB) instead, T up to 16, each
T with its multiply-adds per second (where the product turns from memory- to compute-bound).
"""

import sys

import numpy as np
from numba import njit, prange
from timing import best_ms

from minispec import kernels


@njit(parallel=True, fastmath=True)
def row_sums(w: np.ndarray, out: np.ndarray) -> None:
    """Read every element once, as the kernel does: 64 contiguous ranges shared by the threads."""
    n = w.shape[0]
    for c in prange(64):
        for j in range(c * n // 64, (c + 1) * n // 64):
            s = np.float32(0)
            for k in range(w.shape[1]):
                s += w[j, k]
            out[j] = s


rng = np.random.default_rng(0)
w = kernels.pack(rng.standard_normal((262144, 640), dtype=np.float32))
if sys.argv[1:] == ["int8"]:
    w = kernels.quantize_int8(w)
rows = w.panels.reshape(-1, 640)  # the packed matrix, in memory order
sums = np.empty(rows.shape[0], np.float32)
read = best_ms(lambda: row_sums(rows, sums))
print(f"streaming read: {read:.1f} ms ({w.nbytes / read / 1e6:.1f} GB/s)")
for T in (1, 2, 4, 5, 8, 9, 16):
    x = rng.standard_normal((T, 640), dtype=np.float32)
    ms = best_ms(lambda x=x: kernels.linear(x, w))
    gfma = T * 262144 * 640 / ms / 1e6
    print(f"head ({w.dtype}), T={T}: {ms:.1f} ms (min of 9), {gfma:.1f} GFMA/s")
