"""Where one forward pass spends its time, split by step, min over 7 passes.

`python docs/probes/forward_parts.py`: T = 1, 5, 16 new tokens after a 256-token context.
`python docs/probes/forward_parts.py prefill 32 256 512`: prefills of those lengths into an
empty cache, the head on the last row only (as `generate` does).
"""

import collections
import sys
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
M.rope = timed("rope", M.rope)
# the fast path's steps, by the names of the reference definitions they compute
M.kernels.attend_each = timed("attention", M.kernels.attend_each)
M.kernels.rms_norm_rows = timed("rms_norm", M.kernels.rms_norm_rows)
M.kernels.gelu_gate = timed("gelu_tanh", M.kernels.gelu_gate)
rng = np.random.default_rng(0)
prefill = sys.argv[1:2] == ["prefill"]
context = 0 if prefill else 256
cache = new_cache(model.config, 600)
for T in [int(a) for a in sys.argv[2:]] if prefill else (1, 5, 16):
    cache.truncate(0)
    if context:
        M.forward(model, rng.integers(4, 1000, context), cache, last_only=True)
    best = None
    for run in range(8):
        spent.clear()
        t0 = time.perf_counter()
        M.forward(model, rng.integers(4, 1000, T), cache, last_only=prefill)
        total = time.perf_counter() - t0
        cache.truncate(context)
        if run and (best is None or total < best[0]):
            best = (total, dict(spent))
    total, parts = best
    rest = total - sum(parts.values())
    shown = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(parts.items()))
    speed = f" ({T / total:.0f} tokens/s)" if prefill else ""
    print(f"T={T}: {1e3 * total:.1f} ms{speed} = {shown}, the rest {1e3 * rest:.1f} (ms)")
