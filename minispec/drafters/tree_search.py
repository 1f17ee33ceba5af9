"""Growing a draft tree: deep where the drafter is sure, wide where it is not (EAGLE-2).

Li et al. 2024 ("EAGLE-2: faster inference of language models with dynamic draft trees",
sec. 4). A chain of k guesses spends its whole budget on one path; a fixed tree spends it on
the same shape whatever the context. EAGLE-2 lets the drafter's own confidence shape the tree:

    expand   each depth, run the drafter once over the frontier (T = its size, one batched
             pass); each frontier node u gets `width` children, ranked j = 1, 2, ...
    score    a node's score is its path's cumulative draft probability, the product of the
             drafter's probabilities along the path from the root:
                 score(child j of u) = score(u) * q_u[j]        (q_u[j]: u's j-th largest q)
    beam     the `beam` best-scored children become the next frontier
    rerank   at the end keep the n_nodes best-scored nodes of everything drafted
    prune    once n nodes are drafted, a frontier node that scores no more than the n-th
             best so far is not expanded: none of its descendants could be kept
    stop     after `depth` passes, or sooner: when no frontier node is left

A confident path keeps scores near 1 and grows deep; an unsure node spreads its mass over
several children, which then all score alike and the tree grows wide there.

Why the j-th largest q and not the drawn child's own q: in sampled mode the children are drawn
from q, and the sibling rule that judges them (multi-draft speculative sampling, SpecInfer,
Miao et al. 2024; Sun et al. 2023, "SpecTr") is exact only if whether a child is tried does not
depend on which token it is. A score that reads the drawn token's own q would keep a likely
draw and drop an unlikely one, and the tried children would no longer be a draw from q. The
j-th largest q depends on q alone (the path so far), not on the j-th draw; in greedy mode the
j-th child *is* the j-th most likely token, so both are the same number.

The kept set is closed: a child scores no more than its parent (a factor <= 1) and the j-th
child no more than the (j-1)-th (q_u[j] decreasing), and ties go to the node drafted first,
so the n best nodes include every kept node's parent and earlier siblings (siblings are tried
in draw order: a later one is only ever kept with all earlier ones).

Greedy: children = the drafter's `width` most likely tokens, most likely first (`TOP`).
Sampled: children = `width` draws from q without replacement, in draw order (`SAMPLED`), by
the Gumbel-top-k trick (Kool et al. 2019, "Stochastic beams and where to find them", sec. 3):
the k largest log q(x) + G_x, G_x ~ Gumbel(0, 1) i.i.d., are k draws without replacement,
the largest first. The distribution they were drawn from is stored in tree.q[parent].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minispec.drafters.base import draft_q
from minispec.errors import InputError
from minispec.sampling import SamplingParams
from minispec.tree import SAMPLED, TOP, TokenTree, path_to


@dataclass(frozen=True)
class TreeShape:
    """How a tree may grow: children per expanded node, frontier size, deepest depth."""

    width: int  # children drafted per expanded node
    beam: int  # nodes expanded per depth (the batch T of one drafter pass)
    depth: int  # at most this many drafter passes


def default_shape(n_nodes: int) -> TreeShape:
    """width 4, beam 4, depth up to n_nodes (never more than the budget allows).

    - width 4: a child ranked fifth or lower rarely makes the n best when the budget is a few
      dozen nodes (EAGLE-2 draws 10 per node for a budget of 60; ours are smaller).
    - beam 4: one pass over 4 rows costs about what a pass over 1 costs (the weights are read
      once per pass, `kernels.linear`), so expanding 4 nodes per depth is nearly free.
    - depth n_nodes: a path as deep as the chain of the same budget, so a confident drafter
      loses nothing against the chain; growth stops sooner once no deeper node could make
      the n best (`grow_tree`), so an unsure drafter pays for few passes.
    """
    n = max(n_nodes, 1)
    return TreeShape(width=min(4, n), beam=min(4, n), depth=n)


@dataclass
class Candidates:
    """Every node drafted so far (node 0 the root); parents before children."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    scores: list[float]  # the path's cumulative draft probability (the root: 1)


# frontier (node ids) -> (T, vocab): the drafter's raw scores after each frontier node's path,
# from one batched pass. The drafter keeps its own per-node state (a hidden state, a cache row).
ScoreFrontier = Callable[[Candidates, list[int]], np.ndarray]


def grow_tree(
    root: int,
    score_frontier: ScoreFrontier,
    n_nodes: int,
    sampling: SamplingParams,
    rng: np.random.Generator | None,
    scored: np.ndarray | None = None,
    shape: TreeShape | None = None,
) -> TokenTree:
    """A tree of at most n_nodes drafted tokens under `root`, grown as the module doc says.

    score_frontier: the drafter, one batched pass per depth. scored: the tokens a cheap head
    scores, in increasing order, when known (`draft_q`). shape: None is
    `default_shape(n_nodes)`.
    """
    if n_nodes < 0:
        raise InputError(f"a draft tree needs n_nodes >= 0, got {n_nodes}")
    shape = shape or default_shape(n_nodes)
    c = Candidates([root], [-1], [0], [1.0])
    rows: dict[int, np.ndarray] = {}  # expanded node -> its raw scores (vocab,)
    qs: dict[int, np.ndarray] = {}  # expanded node -> the q its children were drawn from
    frontier = [0] if n_nodes else []
    for _ in range(shape.depth):
        if not frontier:
            break
        logits = score_frontier(c, frontier)  # (T, vocab)
        born = []
        for node, row in zip(frontier, logits, strict=True):
            if sampling.greedy:  # the j-th child is the j-th most likely: q of the child itself
                children = most_likely(row, shape.width, scored)
                ranked = softmax_at(row, children, scored)
            else:
                q = draft_q(row, sampling, scored)  # (vocab,) what the children are drawn from
                children = draw_without_replacement(q, shape.width, rng)
                ranked = largest(q, len(children))
                qs[node] = q
            rows[node] = row
            for token, qj in zip(children, ranked, strict=True):
                c.tokens.append(token)
                c.parents.append(node)
                c.depths.append(c.depths[node] + 1)
                c.scores.append(c.scores[node] * min(float(qj), 1.0))
                born.append(len(c.tokens) - 1)
        frontier = best(c.scores, born, shape.beam)
        if len(c.tokens) - 1 >= n_nodes:
            # A node's descendants score no more than it does and are drafted after the n-th
            # best so far, so a frontier node that does not rank before it has none in the tree:
            # expanding it would cost a row of the next pass and keep nothing.
            nth = best(c.scores, range(1, len(c.tokens)), n_nodes)[-1]
            frontier = [u for u in frontier if ranks_before(c.scores, u, nth)]
    keep = sorted(best(c.scores, range(1, len(c.tokens)), n_nodes))  # closed: see module doc
    return kept_tree(c, keep, SAMPLED if not sampling.greedy else TOP, rows, qs)


def best(scores: list[float], nodes: range | list[int], n: int) -> list[int]:
    """The n best-scored nodes, best first; ties: the node drafted first."""
    return sorted(nodes, key=lambda i: (-scores[i], i))[:n]


def ranks_before(scores: list[float], a: int, b: int) -> bool:
    """Whether node a ranks strictly before node b (`best`'s order)."""
    return (-scores[a], a) < (-scores[b], b)


def kept_tree(
    c: Candidates,
    keep: list[int],
    proposal: str,
    rows: dict[int, np.ndarray],
    qs: dict[int, np.ndarray],
) -> TokenTree:
    """The root and the kept nodes, renumbered in increasing order (parents first, siblings
    in the order drafted)."""
    new = {0: 0} | {old: i + 1 for i, old in enumerate(keep)}
    nodes = [0, *keep]
    return TokenTree(
        tokens=[c.tokens[i] for i in nodes],
        parents=[-1] + [new[c.parents[i]] for i in keep],
        proposal=proposal,
        q={new[i]: q for i, q in qs.items() if i in new},
        logit_rows={new[i]: r for i, r in rows.items() if i in new},
    )


def most_likely(logits: np.ndarray, k: int, scored: np.ndarray | None = None) -> list[int]:
    """The k highest-scored tokens, highest first; ties: the lower id (so the first is
    np.argmax, the chain's greedy pick). Unscored tokens (-inf) are never proposed.

    scored: the tokens a cheap head scores, when known (else found here). Looking among them
    alone also spares np.partition a quarter of a million equal -inf, its slow case.
    """
    ids = np.flatnonzero(logits > -np.inf) if scored is None else scored  # (n,)
    scores = logits[ids]
    k = min(k, ids.size)
    if k == 0:
        return []
    kth = np.partition(scores, ids.size - k)[ids.size - k]  # the k-th largest score
    top = ids[scores >= kth]  # (>= k,) with its ties
    return top[np.lexsort((top, -logits[top]))][:k].tolist()  # by score, then by id


def softmax_at(
    logits: np.ndarray, tokens: list[int], scored: np.ndarray | None = None
) -> np.ndarray:
    """softmax(logits) over the scored tokens, at `tokens` only: (len(tokens),) float64.

    The drafter's own probabilities (temperature 1), which rank a greedy tree's nodes: one
    NumPy pass of exp, where a full row of `draft_q` would cost a kernel call per node.
    """
    row = logits[logits > -np.inf] if scored is None else logits[scored]  # (n,)
    row = row.astype(np.float64)
    top = row.max()
    return np.exp(logits[tokens].astype(np.float64) - top) / np.sum(np.exp(row - top))


def draw_without_replacement(q: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k tokens drawn from q without replacement, in draw order (Gumbel-top-k, module doc).

    Fewer when q has fewer than k tokens of positive probability.
    """
    support = np.flatnonzero(q > 0)  # (m,)
    keys = np.log(q[support]) + rng.gumbel(size=support.size)
    k = min(k, support.size)
    top = np.argpartition(-keys, k - 1)[:k] if k < support.size else np.arange(support.size)
    return support[top[np.argsort(-keys[top])]].tolist()


def largest(q: np.ndarray, k: int) -> np.ndarray:
    """q's k largest probabilities, largest first: (k,), 0 past its support."""
    support = q[q > 0]  # (m,)
    m = min(k, support.size)
    top = -np.sort(-np.partition(support, support.size - m)[support.size - m :]) if m else []
    return np.concatenate([top, np.zeros(k - m)])


def ancestors_visible(c: Candidates, frontier: list[int], row: dict[int, int]) -> np.ndarray:
    """The tree mask of a pass that writes the frontier's rows: (T, R) bool.

    row: node -> its row counted from where the tree's rows begin (`TreeMask.base`), for every
    node written so far; the frontier's rows are added here, after them, in frontier order, so
    R = all rows written, these included. Row t is True at frontier[t]'s own row and at its
    ancestors' (a node not in `row`, a root already in the prefix, is seen as prefix).
    """
    first = len(row)
    for t, node in enumerate(frontier):
        row[node] = first + t
    visible = np.zeros((len(frontier), len(row)), np.bool_)  # (T, R)
    for t, node in enumerate(frontier):
        visible[t, [row[a] for a in path_to(c.parents, node) if a in row]] = True
    return visible
