"""Where one forward pass of T new tokens (after 256) spends its time, min over 7 passes."""

import collections
import time

import numpy as np

from minispec import model as M
from minispec.kv_cache import new_cache
from minispec.loading import load_model

spent: dict[str, float] = collections.defaultdict(float)


def timed(name: str, f):
    def g(*args, **kwargs):
        t0 = time.perf_counter()
        y = f(*args, **kwargs)
        spent[name] += time.perf_counter() - t0
        return y

    return g


model = load_model(None)
M.linear = timed("products", M.linear)
M.kernels.attend_each = timed("attention", M.kernels.attend_each)
for name in ("rms_norm", "rope", "gelu_tanh"):
    setattr(M, name, timed(name, getattr(M, name)))
rng = np.random.default_rng(0)
cache = new_cache(model.config, 300)
M.forward(model, rng.integers(4, 1000, 256), cache, last_only=True)
for T in (1, 5, 16):
    best = None
    for run in range(8):
        spent.clear()
        t0 = time.perf_counter()
        M.forward(model, rng.integers(4, 1000, T), cache)
        total = time.perf_counter() - t0
        cache.truncate(256)
        if run and (best is None or total < best[0]):
            best = (total, dict(spent))
    total, parts = best
    rest = total - sum(parts.values())
    shown = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(parts.items()))
    print(f"T={T}: {1e3 * total:.1f} ms = {shown}, the rest {1e3 * rest:.1f} (ms)")
