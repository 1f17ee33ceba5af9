"""The output head with and without the tile's software prefetch, at several distances.

Each setting runs in a fresh process with an empty Numba cache: `kernels.matmul.PREFETCH`
(steps of k ahead) and `kernels.matmul.PREFETCH_ROWS` (the fewest rows that prefetch, float32
and int8) are read when the tile is compiled, so they are set before the first product.
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
kernels.matmul.PREFETCH = int(sys.argv[2])
kernels.matmul.PREFETCH_ROWS = {"float32": int(sys.argv[3]), "int8": int(sys.argv[4])}
rng = np.random.default_rng(0)
w = rng.standard_normal((262144, 640), dtype=np.float32)
times = []
for name, packed in (("float32", kernels.pack(w)), ("int8", kernels.quantize_int8(w))):
    for T in (1, 2, 5, 16) if name == "float32" else (1, 5):
        x = rng.standard_normal((T, 640), dtype=np.float32)
        times.append(f"{name} T={T} {best_ms(lambda x=x: kernels.linear(x, packed)):.1f}")
print(f"{sys.argv[1]}: " + ", ".join(times) + " ms (min of 9)")
"""

NEVER = 10**9
SETTINGS = [  # (name, steps ahead, fewest float32 rows, fewest int8 rows)
    ("no prefetch", 64, NEVER, NEVER),
    ("64 ahead, from 1 row", 64, 1, 1),
    ("64 ahead, from 2 rows", 64, 2, 2),
    ("16 ahead, float32 from 2 rows, int8 from 1", 16, 2, 1),
    ("64 ahead, float32 from 2 rows, int8 from 1 (minispec's)", 64, 2, 1),
    ("256 ahead, float32 from 2 rows, int8 from 1", 256, 2, 1),
]
here = os.path.dirname(os.path.abspath(__file__))
for name, *numbers in SETTINGS:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": here}
        args = [sys.executable, "-c", ONE_SETTING, name, *map(str, numbers)]
        subprocess.run(args, env=env, check=True)
