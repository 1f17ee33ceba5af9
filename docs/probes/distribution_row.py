"""`sampling.distribution` (the Numba kernel) against `numpy_distribution` (the reference).

    python docs/probes/distribution_row.py

Rows: Gemma 3 270M's logits after a prose prompt (its last 8 positions) and two synthetic
262,144-wide rows, peaked and flat (standard-normal logits x 3). Settings: the app's (0.7,
top-p 0.95), top-p off, top-k with top-p, a large top-k, a wide nucleus. Prints, per setting,
the worst of the rows' times (each the min of 30 calls) and whether every kept set matched.
"""

from __future__ import annotations

import time

import numpy as np

import minispec as ms
from minispec.sampling import SamplingParams, distribution, numpy_distribution


def best_ms(fn, *args, n: int = 30) -> float:  # noqa: ANN001
    fn(*args)
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def main() -> None:
    model = ms.load_model()
    text = (
        "The lighthouse keeper had lived alone on the island for eleven years. Every evening "
        "he climbed the spiral stairs and"
    )
    ids = ms.encode(model.tokenizer, text)
    real = ms.forward(model, ids, ms.new_cache(model.config, len(ids)))[-8:]
    rng = np.random.default_rng(0)
    peaked = (rng.standard_normal(262_144) * 2).astype(np.float32)
    peaked[[123, 7]] = 30.0, 28.0
    flat = (rng.standard_normal(262_144) * 3).astype(np.float32)
    groups = {"Gemma's rows": list(real), "peaked": [peaked], "flat": [flat]}
    settings = [
        SamplingParams(0.7, 0, 0.95),
        SamplingParams(0.7, 0, 1.0),
        SamplingParams(1.0, 40, 0.9),
        SamplingParams(1.0, 1000, 1.0),
        SamplingParams(1.5, 0, 0.99),
    ]
    print(
        f"{'rows':>13}  {'temperature, top-k, top-p':>26}  {'kernel ms':>9}  {'NumPy ms':>8}  same"
    )
    for name, rows in groups.items():
        for s in settings:
            same = all(
                np.array_equal(distribution(r, s) > 0, numpy_distribution(r, s) > 0) for r in rows
            )
            fast = max(best_ms(distribution, r, s) for r in rows)
            slow = max(best_ms(numpy_distribution, r, s, n=3) for r in rows)
            how = f"{s.temperature:g}, {s.top_k}, {s.top_p:g}"
            print(f"{name:>13}  {how:>26}  {fast:9.3f}  {slow:8.2f}  {same}")


if __name__ == "__main__":
    main()
