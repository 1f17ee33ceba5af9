"""From logits to a probability distribution, and drawing from it.

One function, `distribution`, applies temperature, top-k and top-p. Speculative sampling must
apply it identically to the target's logits (p) and the draft's (q): the acceptance test
min(1, p(x)/q(x)) is only exact if both are the distributions actually sampled from. The
speculative loop and every model drafter therefore shape both sides with `distribution`.

`numpy_distribution` is the same function written plainly in NumPy, sorts and all: the one to
read. `distribution` computes it with a Numba kernel, since a sampled step shapes a row of
262,144 logits for every verified and every drafted position; a test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minispec import kernels
from minispec.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy: always the most likely token
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Reject settings that have no meaning, with a message that says what would."""
    if not np.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise InputError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top-p must be in (0, 1] (1 = off), got {top_p}")


GREEDY = SamplingParams()
SOFTMAX = SamplingParams(temperature=1.0)  # the model's own distribution, untouched


def numpy_distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Turn one row of logits into the distribution we sample from, in float64: the readable way.

    temperature 0: one-hot on the argmax (ties go to the lowest id, like np.argmax).
    Otherwise softmax(logits / temperature), then keep the top_k most likely tokens (ties with
    the k-th all stay), then the smallest set whose probability reaches top_p (`nucleus`), and
    renormalise. `distribution` computes the same row in a fraction of the time.
    """
    logits = np.asarray(logits, dtype=np.float64)  # (vocab,)
    if params.greedy:
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    probs = np.exp((logits - logits.max()) / params.temperature)  # softmax, before dividing
    if 0 < params.top_k < probs.size:
        kth = np.partition(probs, -params.top_k)[-params.top_k]
        probs = np.where(probs >= kth, probs, 0.0)
    if params.top_p < 1.0:
        probs = np.where(nucleus(probs, params.top_p), probs, 0.0)
    return probs / probs.sum()


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Top-p's mask (Holtzman et al. 2020, sec. 3.1): sort every token by probability (ties:
    lower id first) and keep each token whose more likely tokens hold less than top_p of the mass.
    """
    order = np.argsort(-probs, kind="stable")
    mass_before = np.cumsum(probs[order]) - probs[order]  # mass of strictly more likely tokens
    keep = np.zeros(probs.size, dtype=bool)
    keep[order] = mass_before < top_p * probs.sum()
    return keep


def distribution(
    logits: np.ndarray, params: SamplingParams, out: np.ndarray | None = None
) -> np.ndarray:
    """`numpy_distribution`'s row, computed by a Numba kernel: float64, shape (vocab,).

    The same tokens kept and the same probabilities up to float64 rounding, the same bits for
    the same input every time, in well under a millisecond for Gemma's 262,144 tokens, where
    the reference's sorts take milliseconds to tens of milliseconds (`kernels.distribution_row`
    says how; docs/benchmarks.md has the times). out: a (vocab,) float64 row to write into.
    """
    logits = np.asarray(logits)
    if logits.dtype != np.float32:
        logits = logits.astype(np.float64, copy=False)
    logits = np.ascontiguousarray(logits)  # (vocab,)
    out = np.empty(logits.shape[0]) if out is None else out
    if params.greedy:
        out[:] = 0.0
        out[np.argmax(logits)] = 1.0
        return out
    kernels.distribution_row(logits, params.temperature, params.top_k, params.top_p, out)
    return out


@dataclass(frozen=True)
class SoftmaxRow:
    """softmax(logits) as a greedy run's trace shows it (`shown`), without the vocabulary-wide
    float64 row: p(t) = exp(l_t - log Z), and the few most likely found among the logits,
    whose order is the probabilities'. log Z over every token (`kernels.log_partition`), or
    over the tokens a cheap head scored (the others are -inf: probability 0).

    Only shown: a greedy step needs no distribution, and the rows of 262,144 probabilities
    that `distribution` would write cost a greedy run's records several times more."""

    logits: np.ndarray  # (vocab,)
    log_z: float
    scored: np.ndarray | None = None  # the head's scored tokens, in increasing order

    @classmethod
    def of(cls, logits: np.ndarray, scored: np.ndarray | None = None) -> SoftmaxRow:
        if scored is None and logits.min() == -np.inf:
            scored = np.flatnonzero(logits > -np.inf)
        if scored is None:
            return cls(logits, kernels.log_partition(logits))
        values = logits[scored].astype(np.float64)  # (n,) the scored tokens' logits
        hi = values.max()
        return cls(logits, hi + float(np.log(np.exp(values - hi).sum())), scored)

    def __getitem__(self, token: int) -> float:
        return float(np.exp(np.float64(self.logits[token]) - self.log_z))

    def top(self, n: int) -> np.ndarray:
        """The ids of the n most likely tokens, most likely first, ties by id."""
        if self.scored is None:
            return kernels.top_n(self.logits, n)
        return self.scored[kernels.top_n(self.logits[self.scored], n)]


def shown(logits: np.ndarray, sampling: SamplingParams) -> np.ndarray | SoftmaxRow:
    """A row of logits as the trace shows it: the run's own distribution when sampling; for a
    greedy run, whose one-hot rows would hide how sure each side was, softmax (temperature 1,
    `SoftmaxRow`). Display only: the greedy rule compares argmaxes and needs no distribution.
    """
    return SoftmaxRow.of(logits) if sampling.greedy else distribution(logits, sampling)


def numpy_sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from a distribution by inverting its cumulative sum: the readable way."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """`numpy_sample`'s draw (the same uniform u, the same inverse of the cumulative sum),
    without a cumulative sum over the whole vocabulary (`kernels.sample_row`)."""
    return kernels.sample_row(probs, rng.random())
