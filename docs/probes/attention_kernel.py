"""The attention kernel alone, for one layer of Gemma 3 270M after 256 tokens: T queries of
4 heads over one key/value head of 256 dimensions; the cache stays in cache. Min of 200."""

import numpy as np
from timing import best_ms

from minispec import kernels

rng = np.random.default_rng(0)
keys = rng.standard_normal((300, 1, 256), dtype=np.float32)  # (capacity, n_kv_heads, head_dim)
values = rng.standard_normal((300, 1, 256), dtype=np.float32)
for T in (1, 5, 16):
    q = rng.standard_normal((T, 4, 256), dtype=np.float32) / 16  # (T, n_heads, head_dim)
    seen = np.array([(0, 257 + t) for t in range(T)])  # causal: query t sees 257 + t keys
    ms = best_ms(lambda q=q, seen=seen: kernels.attend_each(q, keys, values, seen), n=200)
    print(f"T={T}: {ms:.3f} ms per layer, x 18 layers = {18 * ms:.1f} ms")
