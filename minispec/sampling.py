"""From logits to a probability distribution, and drawing from it.

One function, `distribution`, applies temperature, top-k and top-p. Speculative sampling must
apply it identically to the target's logits (p) and the draft's (q): the acceptance test
min(1, p(x)/q(x)) is only exact if both are the distributions actually sampled from. The
speculative loop and every model drafter therefore shape both sides with `probabilities`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minispec.model import softmax


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
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top-p must be in (0, 1] (1 = off), got {top_p}")


GREEDY = SamplingParams()


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Turn one row of logits into the distribution we sample from, in float64.

    temperature 0: one-hot on the argmax (ties go to the lowest id, like np.argmax).
    Otherwise softmax(logits / temperature), then keep the top_k most likely tokens, then the
    smallest set whose probability reaches top_p (Holtzman et al. 2020), and renormalise.
    """
    logits = np.asarray(logits, dtype=np.float64)  # (vocab,)
    if params.greedy:
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    z = logits / params.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if 0 < params.top_k < probs.size:
        kth = np.partition(probs, -params.top_k)[-params.top_k]
        probs = np.where(probs >= kth, probs, 0.0)
    if params.top_p < 1.0:
        probs = np.where(nucleus(probs, params.top_p), probs, 0.0)
    return probs / probs.sum()


def nucleus(probs: np.ndarray, top_p: float, candidates: int = 1024) -> np.ndarray:
    """Top-p's mask: the tokens whose more likely tokens hold less than top_p of the mass.

    In order of decreasing probability (ties: lower id first), token i is kept iff the mass of
    the tokens before it is below top_p * sum(probs). Sorting all 262,144 tokens for that took
    longer than the rest of a sampled step's arithmetic, so the `candidates` most likely are
    sorted first; when the kept ones end among them, strictly above the least of them, no other
    token can be kept and the mask is the same bits as the full sort's (`nucleus_by_sorting`).
    """
    threshold = top_p * probs.sum()
    if candidates < probs.size:
        cand = np.argpartition(-probs, candidates - 1)[:candidates]  # every token above the least
        cand = cand[np.lexsort((cand, -probs[cand]))]  # the full sort's order, ties by id
        p = probs[cand]
        n_kept = int(np.count_nonzero(np.cumsum(p) - p < threshold))  # a prefix: mass grows
        if n_kept < candidates and p[n_kept] > p[-1]:
            keep = np.zeros(probs.size, dtype=bool)
            keep[cand[:n_kept]] = True
            return keep
    return nucleus_by_sorting(probs, top_p)


def nucleus_by_sorting(probs: np.ndarray, top_p: float) -> np.ndarray:
    """`nucleus` the simple way: sort every token (Holtzman et al. 2020, sec. 3.1)."""
    order = np.argsort(-probs, kind="stable")
    mass_before = np.cumsum(probs[order]) - probs[order]  # mass of strictly more likely tokens
    keep = np.zeros(probs.size, dtype=bool)
    keep[order] = mass_before < top_p * probs.sum()
    return keep


def probabilities(logits: np.ndarray, sampling: SamplingParams) -> np.ndarray:
    """The distribution used for p (target) and q (draft) alike, float64, shape (vocab,).

    Sampled: `distribution` (temperature, top-k, top-p), the one function for both sides, so the
    acceptance test compares the distributions actually sampled from.
    Greedy: softmax(logits) at temperature 1. The greedy rule only compares argmaxes and never
    calls this; the trace and `minispec predict` use it to show how sure each side was.
    """
    if sampling.greedy:
        return softmax(np.asarray(logits, dtype=np.float64))
    return distribution(logits, sampling)


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from a distribution by inverting its cumulative sum."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))
