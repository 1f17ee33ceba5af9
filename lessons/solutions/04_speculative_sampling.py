"""Lesson 4's exercises, solved: the bodies a learner writes in 04_speculative_sampling.ipynb."""

import numpy as np

from minispec.sampling import distribution


def my_residual(p, q):
    """norm(max(0, p - q)): the part of p that q under-covers."""
    residual = np.maximum(p - q, 0.0)
    return residual / residual.sum()


def my_accept_or_reject(p, q, x, rng):
    """Keep the draft x with probability min(1, p(x)/q(x)); otherwise sample the residual."""
    if rng.random() < min(1.0, p[x] / q[x]):
        return x
    return int(rng.choice(len(p), p=my_residual(p, q)))


def my_shape_both(target_logits, draft_logits, sampling):
    """p and q through the same temperature, top-k and top-p."""
    return distribution(target_logits, sampling), distribution(draft_logits, sampling)
