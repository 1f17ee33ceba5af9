"""One speculative step at one position: the acceptance test and the residual after a rejection.

Leviathan, Kalman & Matias 2023, Algorithm 1 (p = target, q = draft): a token x drawn from q is
accepted with probability min(1, p(x) / q(x)); after a rejection the token is drawn from
norm(max(0, p - q)). The chain's rule (`speculative.accept_or_reject`) applies them position by
position, the tree's (`tree.sibling_rule`) sibling by sibling. They live here, apart from both,
so that each can import them.
"""

from __future__ import annotations

import numpy as np


def acceptance_probability(p: np.ndarray, q: np.ndarray, x: int) -> float:
    """min(1, p(x) / q(x)): Leviathan et al. 2023, Algorithm 1 (Chen et al. write q/p)."""
    if q[x] <= 0.0:
        raise ValueError(f"the draft proposed token {x} but its q gives it probability 0")
    return min(1.0, float(p[x] / q[x]))


def residual_distribution(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p'(x) = norm(max(0, p(x) - q(x))): where to sample after a rejection (Leviathan, sec. 2.3).

    It is p's mass that q under-covers. Together with the acceptances it gives exactly p:
    P(emit x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) p'(x) = p(x).
    """
    residual = np.maximum(p - q, 0.0)  # (vocab,)
    total = residual.sum()
    # A rejection implies p(x) < q(x) somewhere, so total > 0; rounding can leave it ~0.
    return residual / total if total > 0 else p
