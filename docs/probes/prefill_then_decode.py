"""Prefills (256 and 512 tokens by default, or the lengths given) and the twelve decoding steps
after each, three times: do the first steps after a long prefill cost more than the later ones?

Also prints Numba's threading layer, and, for each group of threads, the CPU time it used while
the twelve steps ran: the main thread, Numba's workers (which run the kernels) and the threads
that were there before Numba started (OpenBLAS's pool, created when NumPy loads). A pool that
spins while the kernels run takes a core from them: with 2 cores and 2 kernel threads, one
spinning thread makes every parallel region wait for the thread it displaced.

`--blas` runs one BLAS product of the prompt's size (`x @ w.T`, T x 640 by 2048 x 640) after
each prefill, before the steps: what a prefill whose products or attention went through NumPy's
BLAS did. Its threads then spin on after the product returns (OpenBLAS waits busily for more
work before it sleeps), and the first steps show it.
"""

import os
import sys
import threading
import time

import numpy as np

before_numba = {int(t) for t in os.listdir("/proc/self/task")}  # main + OpenBLAS's pool

import numba  # noqa: E402

from minispec import kernels  # noqa: E402
from minispec.kv_cache import new_cache  # noqa: E402
from minispec.loading import load_model  # noqa: E402
from minispec.model import forward  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) of every thread of this process, by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def by_group(start: dict[int, float], end: dict[int, float]) -> str:
    main = threading.get_native_id()
    groups = {"main": 0.0, "Numba": 0.0, "OpenBLAS": 0.0}
    for tid, t in end.items():
        used = t - start.get(tid, 0.0)
        group = "main" if tid == main else "OpenBLAS" if tid in before_numba else "Numba"
        groups[group] += used
    return ", ".join(f"{k} {v:.2f}" for k, v in groups.items())


args = [a for a in sys.argv[1:] if a != "--blas"]
blas = "--blas" in sys.argv
model = load_model(None)
kernels.warmup()
print("Numba threading layer:", numba.threading_layer(), "| BLAS product after prefill:", blas)
rng = np.random.default_rng(1)
w = rng.standard_normal((2048, 640), dtype=np.float32)
for T in [int(a) for a in args] or (256, 512):
    for _ in range(3):
        cache = new_cache(model.config, T + 12)
        t0 = time.perf_counter()
        forward(model, rng.integers(4, model.config.vocab_size, T), cache, last_only=True)
        prefill = time.perf_counter() - t0
        if blas:
            _ = rng.standard_normal((T, 640), dtype=np.float32) @ w.T
        steps, start = [], cpu_seconds()
        for token in range(5, 17):
            t0 = time.perf_counter()
            forward(model, [token], cache)
            steps.append(1000 * (time.perf_counter() - t0))
        cpu = by_group(start, cpu_seconds())
        shown = " ".join(f"{ms:.0f}" for ms in steps)
        speed = f"{1000 * prefill:.0f} ms ({T / prefill:.0f} tokens/s)"
        first, steady = np.mean(steps[:3]), np.median(steps[3:])
        print(f"prefill {T}: {speed}; steps (ms) {shown}; first 3 / steady {first / steady:.2f}")
        print(f"    CPU seconds during the steps: {cpu}")
