"""What a pass over one 262,144-wide row can cost on this CPU, beside `sampling.distribution`.

    python docs/probes/distribution_ceiling.py

On a flat row (standard-normal logits x 3), min and median of 50 calls, on Numba's threads:
the distribution at temperature 0.7 with top-p 0.95 (exp, histogram, cut, scaling) and with
no cut (top-p 1: exp, sum and scaling only); the kernel's exp pass alone (exp and sum, no
histogram), the floor of any distribution that must match the reference's float64 row; a plain
Numba loop of np.exp and its sum over the row; the 2 MB float64 row written once, and read once
(16 running sums). Then a cheap head's row (8,192 scored tokens, the rest -inf, as the MTP
drafter's): the distribution over the whole row against `draft_q` over the scored tokens. Not
a test: it asserts nothing.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from minispec.drafters.base import draft_q
from minispec.kernels.distribution import N_ROW_CHUNKS, _exp_kernel
from minispec.kernels.pointwise import ordered_sum
from minispec.sampling import SamplingParams, distribution


@njit(parallel=True)
def exp_and_sum(x: np.ndarray, out: np.ndarray) -> float:
    total = 0.0
    for i in prange(x.shape[0]):
        e = np.exp(np.float64(x[i]) - 10.0)
        out[i] = e
        total += e
    return total


@njit(parallel=True)
def write(out: np.ndarray) -> None:
    step = out.shape[0] // N_ROW_CHUNKS
    for c in prange(N_ROW_CHUNKS):
        out[c * step : (c + 1) * step] = 1.0


@njit(parallel=True)
def read(out: np.ndarray) -> float:
    step = out.shape[0] // N_ROW_CHUNKS
    sums = np.zeros(N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        sums[c] = ordered_sum(out[c * step : (c + 1) * step])
    return sums.sum()


def timed(f, n: int = 50) -> str:
    f()  # compile, warm the caches
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return f"min {1000 * min(times):.3f} ms, median {1000 * float(np.median(times)):.3f} ms"


def main() -> None:
    rng = np.random.default_rng(0)
    flat = (rng.standard_normal(262_144) * 3).astype(np.float32)
    out = np.empty(flat.shape[0])
    top_p = SamplingParams(temperature=0.7, top_p=0.95)
    no_cut = SamplingParams(temperature=0.7)
    print(f"distribution, 0.7 / top-p 0.95: {timed(lambda: distribution(flat, top_p))}")
    print(f"distribution, 0.7, no cut:      {timed(lambda: distribution(flat, no_cut))}")
    sums, no_bins = np.zeros(N_ROW_CHUNKS), np.empty(0, np.int16)
    no_mass = np.zeros((N_ROW_CHUNKS, 0))
    hi, pass_two = float(flat.max()), (sums, 2.0, 0.0, no_bins, no_mass)

    def exp_pass() -> None:
        _exp_kernel(flat, hi, 1 / 0.7, out, *pass_two)

    print(f"the exp pass alone:             {timed(exp_pass)}")
    print(f"np.exp and its sum (Numba):     {timed(lambda: exp_and_sum(flat, out))}")
    print(f"the float64 row written:        {timed(lambda: write(out))}")
    print(f"the float64 row read:           {timed(lambda: read(out))}")
    head = np.full(flat.shape[0], -np.inf, np.float32)
    scored = np.sort(rng.choice(flat.shape[0], 8192, replace=False))
    head[scored] = flat[scored]
    softmax = SamplingParams(temperature=1.0)
    print(f"a cheap head's row, whole row:  {timed(lambda: distribution(head, softmax))}")
    print(f"the same, `draft_q` (scored):   {timed(lambda: draft_q(head, softmax, scored))}")


if __name__ == "__main__":
    main()
