"""rms_norm of one row: warm, and right after a 5 MB read (what a weight matrix does)."""

import time

import numpy as np

from minispec import kernels
from minispec.model import rms_norm

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 640), dtype=np.float32)
gain = rng.standard_normal(640).astype(np.float32)
w_plain = rng.standard_normal((2048, 640), dtype=np.float32)  # 5 MB, like gate_proj
w = kernels.pack(w_plain)


def median_us(before) -> float:
    times = []
    for _ in range(2000):
        before()
        t0 = time.perf_counter()
        rms_norm(x, gain, 1e-6)
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


print(f"warm: {median_us(lambda: None):.1f} us")
print(f"after a 5 MB NumPy read: {median_us(lambda: w_plain.sum()):.1f} us")
print(f"after the kernel on a 5 MB weight: {median_us(lambda: kernels.linear(x, w)):.1f} us")
