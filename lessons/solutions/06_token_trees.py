"""Lesson 6's exercises, solved: the bodies a learner writes in 06_token_trees.ipynb."""

import numpy as np


def my_ancestor_mask(parents):
    """(n, n) bool: row i is True at i and at every ancestor of i (parents[0] = -1: the root)."""
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        j = i
        while j != -1:  # i itself, its parent, its parent's parent, ..., the root
            mask[i, j] = True
            j = parents[j]
    return mask


def my_sibling_rule(p, q, candidates, proposal):
    """The rule at one node: (accept[i] = P(c_i accepted | tried), the residual if all fail).

    "sampled" (drawn from q without replacement): accept c with min(1, p_i(c) / q_i(c)); on
    rejection p <- norm(max(p_i - q_i, 0)), q <- q_i without c, renormalised.
    "top" (chosen, not drawn): q_i is one-hot on c: accept with p_i(c); on rejection zero p(c).
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    accept = []
    for c in candidates:
        if proposal == "sampled":
            q_i = q
        else:
            q_i = np.zeros_like(p)
            q_i[c] = 1.0
        accept.append(min(1.0, p[c] / q_i[c]))
        left = np.maximum(p - q_i, 0.0)
        p = left / left.sum()
        if proposal == "sampled":
            q = q.copy()
            q[c] = 0.0
            q = q / q.sum()
    return accept, p
