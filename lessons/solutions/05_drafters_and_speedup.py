"""Lesson 5's exercises, solved: the bodies a learner writes in 05_drafters_and_speedup.ipynb."""

import numpy as np


def my_query_only_attention(q, keys, values, position, cached, window, scale):
    """softmax(scale q_h . K_s) V_s over the keys s the query at `position` sees, per head h."""
    start = 0 if window is None else max(0, position - window + 1)
    stop = min(position + 1, cached)  # causal, and only what the target has cached
    n_heads, n_kv = q.shape[0], keys.shape[1]
    group = n_heads // n_kv  # query heads h*group .. (h+1)*group - 1 read key/value head h
    out = np.empty(q.shape)
    for h in range(n_heads):
        k, v = keys[start:stop, h // group], values[start:stop, h // group]  # (S, head_dim)
        scores = scale * (k @ q[h])  # (S,)
        weights = np.exp(scores - scores.max())
        out[h] = (weights / weights.sum()) @ v
    return out


def my_expected_tau(alpha, k):
    """1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha); k + 1 when alpha = 1."""
    if alpha == 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def my_best_k(alpha, draft_ms, forward_ms):
    """The k with the most tokens per millisecond: tau(k) / (k * draft_ms + forward_ms[k + 1])."""
    ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]
    return max(ks, key=lambda k: my_expected_tau(alpha, k) / (k * draft_ms + forward_ms[k + 1]))
