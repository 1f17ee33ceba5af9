"""A prompt's products: T = 32 and 256 rows through the kernel and through NumPy's BLAS.

All kernel timings come first: after a BLAS call, OpenBLAS's threads keep spinning for a while
and a Numba kernel started then competes with them for the cores (~8 ms per call here).
"""

import numpy as np
from timing import best_ms

from minispec import kernels

rng = np.random.default_rng(0)
cases = []
for d_out, d_in in ((262144, 640), (2048, 640), (640, 2048)):
    w = rng.standard_normal((d_out, d_in), dtype=np.float32)
    for T in (32, 256):
        cases.append((w, kernels.pack(w), rng.standard_normal((T, d_in), dtype=np.float32)))
ours = [best_ms(lambda x=x, p=p: kernels.linear(x, p), 3) for _, p, x in cases]
blas = [best_ms(lambda x=x, w=w: x @ w.T, 3) for w, _, x in cases]
for (w, _, x), a, b in zip(cases, ours, blas, strict=True):
    shape = f"{w.shape[0]} x {w.shape[1]}, T={x.shape[0]}"
    print(f"{shape}: kernel {a:.1f} ms, BLAS {b:.1f} ms (min of 3)")
