"""Prefills (256 and 512 tokens by default, or the lengths given) and the twelve decoding steps
after each, three times: do the first steps after a long prefill cost more than the later ones?

Also prints Numba's threading layer (omp, tbb or workqueue): whose threads wait between kernels.
"""

import sys
import time

import numba
import numpy as np

from minispec import kernels
from minispec.kv_cache import new_cache
from minispec.loading import load_model
from minispec.model import forward

model = load_model(None)
kernels.warmup()
print("Numba threading layer:", numba.threading_layer())
rng = np.random.default_rng(1)
for T in [int(a) for a in sys.argv[1:]] or (256, 512):
    for _ in range(3):
        cache = new_cache(model.config, T + 12)
        t0 = time.perf_counter()
        forward(model, rng.integers(4, model.config.vocab_size, T), cache, last_only=True)
        prefill = time.perf_counter() - t0
        steps = []
        for token in range(5, 17):
            t0 = time.perf_counter()
            forward(model, [token], cache)
            steps.append(1000 * (time.perf_counter() - t0))
        shown = " ".join(f"{ms:.0f}" for ms in steps)
        speed = f"{1000 * prefill:.0f} ms ({T / prefill:.0f} tokens/s)"
        print(f"prefill {T}: {speed}; steps (ms) {shown}")
