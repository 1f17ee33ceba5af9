"""A prompt's products: T = 32 and 256 rows through the kernel and through NumPy's BLAS."""

import time

import numpy as np

from minispec import kernels


def best_ms(f, n: int = 3) -> float:
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


rng = np.random.default_rng(0)
for d_out, d_in in ((262144, 640), (2048, 640), (640, 2048)):
    w = rng.standard_normal((d_out, d_in), dtype=np.float32)
    packed = kernels.pack(w)
    for T in (32, 256):
        x = rng.standard_normal((T, d_in), dtype=np.float32)
        ours = best_ms(lambda x=x, p=packed: kernels.linear(x, p))
        blas = best_ms(lambda x=x, w=w: x @ w.T)
        print(f"{d_out} x {d_in}, T={T}: kernel {ours:.1f} ms, BLAS {blas:.1f} ms (min of 3)")
