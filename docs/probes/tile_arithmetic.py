"""The kernel's arithmetic alone: a 128 x 640 weight (327 KB) stays in L2; one thread."""

import time

import numba
import numpy as np

from minispec import kernels

numba.set_num_threads(1)
rng = np.random.default_rng(0)
w = kernels.pack(rng.standard_normal((128, 640), dtype=np.float32))
for T in (1, 2, 5, 8, 16):
    x = rng.standard_normal((T, 640), dtype=np.float32)
    for _ in range(100):
        kernels.linear(x, w)
    n = 3000
    t0 = time.perf_counter()
    for _ in range(n):
        kernels.linear(x, w)
    dt = (time.perf_counter() - t0) / n
    print(f"T={T}: {dt * 1e6:.1f} us per call, {T * 128 * 640 / dt / 1e9:.1f} GFMA/s")
