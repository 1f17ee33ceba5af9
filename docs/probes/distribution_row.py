"""`sampling.distribution` (the Numba kernel) against `numpy_distribution` (the reference).

    python docs/probes/distribution_row.py [--against REV]

Rows: Gemma 3 270M's logits after a prose prompt (its last 8 positions) and two synthetic
262,144-wide rows, peaked and flat (standard-normal logits x 3). Settings: the app's (0.7,
top-p 0.95), top-p off, top-k with top-p, a large top-k, a hot wide nucleus. Prints, per
setting, the worst of the rows' times (each the best of 15 calls into a given row, as the
engine calls it) and whether every kept set matched the reference's.

--against REV also times the kernel as it was at git revision REV (its
minispec/kernels/distribution.py, loaded beside this one), in the same minutes: each
setting is timed four times, the two kernels taking turns, and the best of the four kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
from timing import best_ms

import minispec as ms
from minispec.kernels import distribution_row
from minispec.sampling import SamplingParams, distribution, numpy_distribution

SETTINGS = [
    SamplingParams(0.7, 0, 0.95),
    SamplingParams(0.7, 0, 1.0),
    SamplingParams(1.0, 40, 0.9),
    SamplingParams(1.0, 1000, 1.0),
    SamplingParams(1.5, 0, 0.99),
]


def kernel_at(rev: str) -> ModuleType:
    """minispec/kernels/distribution.py as it was at git revision rev, as a module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:minispec/kernels/distribution.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "distribution_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("distribution_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows() -> dict[str, list[np.ndarray]]:
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
    return {"Gemma's rows": list(real), "peaked": [peaked], "flat": [flat]}


def worst_ms(row_fn, rows: list[np.ndarray], s: SamplingParams, out: np.ndarray) -> float:  # noqa: ANN001
    return max(
        best_ms(lambda r=r: row_fn(r, s.temperature, s.top_k, s.top_p, out), n=15) for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="REV", help="also time the kernel at git REV")
    args = parser.parse_args()
    then = kernel_at(args.against) if args.against else None
    out = np.empty(262_144)
    head = f"{'rows':>13}  {'temperature, top-k, top-p':>26}  {'kernel ms':>9}"
    head += f"  {args.against + ' ms':>12}" if then else ""
    print(f"{head}  {'NumPy ms':>8}  same")
    for name, group in rows().items():
        for s in SETTINGS:
            same = all(
                np.array_equal(distribution(r, s) > 0, numpy_distribution(r, s) > 0) for r in group
            )
            now_ms, then_ms = float("inf"), float("inf")
            for _ in range(4 if then else 1):
                now_ms = min(now_ms, worst_ms(distribution_row, group, s, out))
                if then:
                    then_ms = min(then_ms, worst_ms(then.distribution_row, group, s, out))
            slow = max(best_ms(lambda r=r, s=s: numpy_distribution(r, s), n=3) for r in group)
            how = f"{s.temperature:g}, {s.top_k}, {s.top_p:g}"
            line = f"{name:>13}  {how:>26}  {now_ms:9.3f}"
            line += f"  {then_ms:12.3f}" if then else ""
            print(f"{line}  {slow:8.2f}  {same}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
