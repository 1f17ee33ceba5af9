"""The attention kernel alone, for one layer of Gemma 3 270M: T queries of 4 heads over one
key/value head of 256 dimensions; the cache stays in cache. Decoding and verification after
256 tokens (min of 200), and causal prompts of 256 and 512 tokens into an empty cache (min of 9)."""

import numpy as np
from timing import best_ms

from minispec import kernels

rng = np.random.default_rng(0)
keys = rng.standard_normal((600, 1, 256), dtype=np.float32)  # (capacity, n_kv_heads, head_dim)
values = rng.standard_normal((600, 1, 256), dtype=np.float32)
for T, context in ((1, 256), (5, 256), (16, 256), (256, 0), (512, 0)):
    q = rng.standard_normal((T, 4, 256), dtype=np.float32) / 16  # (T, n_heads, head_dim)
    seen = np.array([(0, context + 1 + t) for t in range(T)])  # causal
    n = 200 if T <= 16 else 9
    ms = best_ms(lambda q=q, seen=seen: kernels.attend_each(q, keys, values, seen), n=n)
    print(f"T={T} after {context}: {ms:.3f} ms per layer, x 18 layers = {18 * ms:.1f} ms")
