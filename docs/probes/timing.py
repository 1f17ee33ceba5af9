"""The one timing helper the probes share (run them as `python docs/probes/NAME.py`)."""

import time
from collections.abc import Callable


def best_ms(f: Callable[[], object], n: int = 9) -> float:
    """The fastest of n calls of f, in milliseconds, after one untimed call (compiles, warms)."""
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)
