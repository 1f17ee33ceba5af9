"""The register tile's arithmetic alone: a 128 x 640 weight (327 KB) stays in L2; one thread.

Calls the kernel's tile in a compiled loop, so no thread launch or Python call is timed.
"""

import time

import numpy as np
from numba import njit

from minispec import kernels
from minispec.kernels import matmul


@njit
def all_tiles(x, panels, out, repeats):
    for _ in range(repeats):
        for j in range(panels.shape[0] // matmul.TILE_PANELS):
            for t0 in range(0, x.shape[0], matmul.TILE_ROWS):
                rows = min(matmul.TILE_ROWS, x.shape[0] - t0)
                p = matmul.TILE_PANELS * j
                matmul._tile(x, t0, rows, panels, p, 0, x.shape[1], None, out)  # all of k


rng = np.random.default_rng(0)
w = kernels.pack(rng.standard_normal((128, 640), dtype=np.float32))
for T in (1, 2, 5, 6, 8, 16):
    x = rng.standard_normal((T, 640), dtype=np.float32)
    out = np.empty((T, 128), np.float32)
    all_tiles(x, w.panels, out, 10)
    repeats = 20_000 // T
    t0 = time.perf_counter()
    all_tiles(x, w.panels, out, repeats)
    dt = (time.perf_counter() - t0) / repeats
    print(f"T={T}: {dt * 1e6:.2f} us per product, {T * 128 * 640 / dt / 1e9:.1f} GFMA/s")
