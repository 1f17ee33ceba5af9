"""Lesson 5's exercises, solved: the bodies a learner writes in 05_drafters_and_speedup.ipynb."""


def my_expected_tau(alpha, k):
    """1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha); k + 1 when alpha = 1."""
    if alpha == 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def my_best_k(alpha, draft_ms, forward_ms):
    """The k with the most tokens per millisecond: tau(k) / (k * draft_ms + forward_ms[k + 1])."""
    ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]
    return max(ks, key=lambda k: my_expected_tau(alpha, k) / (k * draft_ms + forward_ms[k + 1]))
