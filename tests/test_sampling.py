"""`sampling.distribution` (a Numba kernel) against `numpy_distribution`, the readable reference.

Same tokens kept; the same probabilities up to float64 rounding; the same bits on every call.
(Where the mass before a token lies within rounding of top_p, as with top_p = 1 - 1e-12 on a
row with a long tail of tiny probabilities, the two sums may round either way: no row here does.)
Rows: Gemma-wide peaked and flat ones, ties (at the top-k and top-p edges, across the
histogram's bins), masked (-inf) tokens, tiny rows, float64 logits, and rows in order (largest
first or last), which put all of top-k's candidates in a few of its groups.
"""

from __future__ import annotations

import numpy as np
import pytest

from minispec.kernels import top_n
from minispec.sampling import (
    SOFTMAX,
    SamplingParams,
    SoftmaxRow,
    distribution,
    numpy_distribution,
    numpy_sample,
    sample,
    shown,
)

WIDE = 262_144


def rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    peaked = (rng.standard_normal(WIDE) * 2).astype(np.float32)
    peaked[[17, 40_000, 200_001]] = [30.0, 29.0, 27.5]
    masked = (rng.standard_normal(WIDE) * 3).astype(np.float32)
    masked[rng.choice(WIDE, WIDE - 5_000, replace=False)] = -np.inf  # a cheap head's row
    return {
        "peaked": peaked,
        "flat": (rng.standard_normal(WIDE) * 3).astype(np.float32),
        "all tied": np.zeros(5_000, np.float32),
        "tied levels": rng.permutation(np.repeat([4.0, 2.0, 1.0, 0.0], [3, 700, 700, 3_000])),
        "masked": masked,
        "tiny": np.array([1.0, 3.0, 3.0, -2.0, 0.5], np.float32),
        "float64": rng.standard_normal(3_000) * 4,
        "ascending": np.sort(rng.standard_normal(WIDE).astype(np.float32) * 3),
        "descending": np.sort(rng.standard_normal(WIDE).astype(np.float32) * 3)[::-1].copy(),
    }


SETTINGS = [
    SamplingParams(0.7, 0, 0.95),
    SamplingParams(0.7, 0, 1.0),
    SamplingParams(1.5, 0, 0.9),
    SamplingParams(1.0, 0, 0.01),  # the top token alone
    SamplingParams(1.0, 0, 0.999),
    SamplingParams(2.0, 0, 0.99),  # hot and wide: most of a flat row is a top-p candidate
    SamplingParams(1.0, 1, 1.0),
    SamplingParams(1.0, 2, 1.0),  # a tie at the k-th
    SamplingParams(0.8, 50, 0.9),
    SamplingParams(1.2, 1_000, 1.0),
    SamplingParams(1.0, 4_999, 0.5),
    SamplingParams(0.0),  # greedy: one-hot
]


@pytest.mark.parametrize("name", list(rows()))
@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_fast_distribution_equals_the_numpy_reference(name: str, params: SamplingParams) -> None:
    logits = rows()[name]
    fast, ref = distribution(logits, params), numpy_distribution(logits, params)
    assert fast.dtype == np.float64 and fast.shape == logits.shape
    np.testing.assert_array_equal(fast > 0, ref > 0)  # the same tokens kept
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-300)
    assert fast.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(distribution(logits, params), fast)  # the same bits again


def test_edges_by_hand() -> None:
    """Ties stay together at the top-k edge; top-p counts mass strictly before a token."""
    logits = np.log(np.array([4.0, 2.0, 2.0, 1.0, 1.0], np.float32))
    np.testing.assert_array_equal(distribution(logits, SamplingParams(1.0, 2)) > 0, [1, 1, 1, 0, 0])
    # masses 0.4, 0.2, 0.2, 0.1, 0.1: before token 1 lies 0.4, before token 2 (ties: id order) 0.6
    keep = distribution(logits, SamplingParams(1.0, 0, 0.39)) > 0
    np.testing.assert_array_equal(keep, [1, 0, 0, 0, 0])
    keep = distribution(logits, SamplingParams(1.0, 0, 0.55)) > 0
    np.testing.assert_array_equal(keep, [1, 1, 0, 0, 0])
    keep = distribution(logits, SamplingParams(1.0, 0, 0.65)) > 0
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0])


def test_top_p_within_rounding_of_one_looks_at_every_token() -> None:
    """Within 1e-9 of top_p = 1 no floor can be trusted: every token is a candidate, and a
    row whose least likely token is far above the rounding keeps them all, as the reference."""
    logits = np.random.default_rng(5).standard_normal(1_000).astype(np.float32)
    params = SamplingParams(1.0, 0, 1 - 1e-10)
    fast, ref = distribution(logits, params), numpy_distribution(logits, params)
    assert (fast > 0).all() and (ref > 0).all()
    np.testing.assert_allclose(fast, ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["peaked", "flat", "masked", "tied levels", "tiny"])
def test_a_shown_softmax_row_is_the_softmax_distribution(name: str) -> None:
    """A greedy trace shows p and q as `SoftmaxRow`s: the same probabilities as the full row
    `distribution(logits, SOFTMAX)` writes, and the same few most likely, in the same order;
    for a cheap head's row, also when told its scored tokens."""
    logits = rows()[name]
    full = distribution(logits, SOFTMAX)
    ids = np.random.default_rng(2).choice(logits.size, 50)
    scored = np.flatnonzero(logits > -np.inf) if name == "masked" else None
    for row in (SoftmaxRow.of(logits), SoftmaxRow.of(logits, scored)):
        np.testing.assert_allclose([row[t] for t in ids], full[ids], rtol=1e-5, atol=1e-300)
        np.testing.assert_array_equal(row.top(6), top_n(full, 6))


def test_writes_into_a_given_row_and_shapes_greedy_display_as_softmax() -> None:
    logits = np.random.default_rng(0).standard_normal(1_000).astype(np.float32)
    out = np.full(1_000, 7.0)
    assert distribution(logits, SamplingParams(0.9, 0, 0.8), out) is out
    np.testing.assert_allclose(out, numpy_distribution(logits, SamplingParams(0.9, 0, 0.8)))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    greedy_shown = shown(logits, SamplingParams())
    np.testing.assert_allclose([greedy_shown[t] for t in range(1_000)], softmax, rtol=1e-6)
    sampled = SamplingParams(0.9, 0, 0.8)
    np.testing.assert_array_equal(shown(logits, sampled), distribution(logits, sampled))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([0.0, np.nan, 1.0], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float32), r"\+inf"),
        (np.full(4, -np.inf, np.float32), "every logit is -inf"),
    ],
)
def test_logits_that_make_no_distribution_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distribution(bad, SamplingParams(1.0))


def test_sample_draws_what_numpy_sample_draws() -> None:
    """The chunked inverse CDF picks the token the full cumulative sum picks, for the same u,
    and never one of probability 0 (rows with zeros, of every length up to a few chunks)."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        probs = rng.random(int(rng.integers(1, 5_000))) ** 8
        probs[rng.random(probs.size) < 0.3] = 0.0
        if probs.sum() == 0:
            continue
        seed = int(rng.integers(1 << 30))
        token = sample(probs, np.random.default_rng(seed))
        assert token == numpy_sample(probs, np.random.default_rng(seed)) and probs[token] > 0
