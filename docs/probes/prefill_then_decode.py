"""A 256-token prefill and the first decoding step after it, four times."""

import time

import numpy as np

from minispec.kv_cache import new_cache
from minispec.loading import load_model
from minispec.model import forward

model = load_model(None)
ids = np.random.default_rng(1).integers(4, model.config.vocab_size, 256)
for _ in range(4):
    cache = new_cache(model.config, 300)
    t0 = time.perf_counter()
    forward(model, ids, cache, last_only=True)
    t1 = time.perf_counter()
    forward(model, [5], cache)
    t2 = time.perf_counter()
    print(f"prefill {1e3 * (t1 - t0):.0f} ms, first decoding step {1e3 * (t2 - t1):.0f} ms")
