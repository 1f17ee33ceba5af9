"""The output head with and without the tile's software prefetch, at several distances.

Each setting runs in a fresh process with an empty Numba cache: `kernels.PREFETCH` (steps of k
ahead) and `kernels.PREFETCH_ROWS` (the fewest rows that prefetch) are read when the tile is
compiled, so they are set before the first product.
"""

import os
import subprocess
import sys
import tempfile

ONE_SETTING = """
import sys
import numpy as np
from timing import best_ms
from minispec import kernels
kernels.PREFETCH, kernels.PREFETCH_ROWS = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
w = kernels.pack(rng.standard_normal((262144, 640), dtype=np.float32))
times = []
for T in (1, 2, 5, 16):
    x = rng.standard_normal((T, 640), dtype=np.float32)
    times.append(f"T={T} {best_ms(lambda x=x: kernels.linear(x, w)):.1f}")
print(f"{sys.argv[1]}: " + ", ".join(times) + " ms (min of 9)")
"""

SETTINGS = [
    ("no prefetch", 64, 10**9),
    ("64 ahead, from 1 row", 64, 1),
    ("16 ahead, from 2 rows", 16, 2),
    ("64 ahead, from 2 rows (minispec's)", 64, 2),
    ("256 ahead, from 2 rows", 256, 2),
]
here = os.path.dirname(os.path.abspath(__file__))
for name, distance, rows in SETTINGS:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": here}
        args = [sys.executable, "-c", ONE_SETTING, name, str(distance), str(rows)]
        subprocess.run(args, env=env, check=True)
