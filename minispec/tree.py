"""Token trees: several drafted continuations, verified together in one target forward.

A chain of k guesses dies at its first wrong token. A drafter that is unsure often has the
target's choice among its next few candidates, so a tree keeps several of them: SpecInfer
(Miao et al. 2024), Medusa (Cai et al. 2024), EAGLE-2 (Li et al. 2024), Sequoia (Chen et al. 2024).

    node 0 = the newest token x (emitted, not yet in the target's cache): the root
    nodes 1..n: drafted tokens, each with a parent; a parent comes before its children

         x ── the ── cat ── sat           parents = [-1, 0, 1, 2, 0, 4, 1]
          └── a ── dog                    depths  = [ 0, 1, 2, 3, 1, 2, 2]
               the ── dog                 (node 6 "dog" is a second child of node 1 "the")

One forward reads all n + 1 nodes: node i goes into the cache's row base + i, but takes the
position base + depth(i) (its RoPE angle: where it would stand in its own path), and it attends
to the prefix and to its own ancestors only: `ancestor_mask`, the tree attention mask. Row i of
the output is then the target's prediction after the path root -> i, exactly (bit for bit) what
decoding that path one token at a time would give: the kernels read a query's keys in the same
order either way.

After the rule has walked the tree (`accept_tree_greedy`, `accept_tree_sampled`), the accepted
path's keys and values move to the rows right after the prefix (`compact`), and the cache is
what a plain decoding of the accepted text would have written. A chain is the tree in which
every node has one child (`chain`), and the rule on it is the chain's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minispec.kv_cache import KVCache
from minispec.model import TreeMask

# How siblings were chosen, which decides the rule that may judge them (`accept_tree_sampled`).
TOP = "top"  # deterministically: the drafter's most likely tokens (greedy, or prompt lookup)
SAMPLED = "sampled"  # drawn from q without replacement, in the order drawn
PROPOSALS = (TOP, SAMPLED)


@dataclass
class TokenTree:
    """A drafted tree: node 0 is the root (the newest token), parents before children.

    Siblings are listed in the order the drafter proposed them, which is the order the
    sampled rule tries them. q, when sampling, holds for each node with children the
    drafter's distribution over those children (the one they were drawn from).
    """

    tokens: list[int]  # (n + 1,) tokens[0]: the root
    parents: list[int]  # (n + 1,) parents[0] = -1; parents[i] < i
    proposal: str = TOP  # `TOP` or `SAMPLED`
    q: dict[int, np.ndarray] = field(default_factory=dict)  # node -> (vocab,) q of its children
    logit_rows: dict[int, np.ndarray] = field(default_factory=dict)  # node -> its raw scores

    def __post_init__(self) -> None:
        check_tree(self.tokens, self.parents, self.proposal)

    @property
    def n_drafted(self) -> int:
        return len(self.tokens) - 1

    def children(self, node: int) -> list[int]:
        """The node's children, in the order they were proposed."""
        return [i for i, parent in enumerate(self.parents) if parent == node]


def check_tree(tokens: list[int], parents: list[int], proposal: str) -> None:
    """A tree that breaks these rules would silently verify the wrong paths: stop it loudly."""
    if len(tokens) != len(parents) or not parents or parents[0] != -1:
        raise ValueError("a token tree needs one parent per token and the root (-1) first")
    if any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
        raise ValueError("a token tree lists every parent before its children")
    if proposal not in PROPOSALS:
        raise ValueError(f"a token tree's proposal is one of {PROPOSALS}, got {proposal!r}")
    seen = set()
    for i in range(1, len(tokens)):
        if (parents[i], tokens[i]) in seen:
            raise ValueError(f"node {i} repeats a sibling's token {tokens[i]}")
        seen.add((parents[i], tokens[i]))


def chain(tokens: list[int]) -> TokenTree:
    """The chain root -> d_1 -> ... -> d_k as a tree: tokens = [newest, d_1, ..., d_k]."""
    return TokenTree(list(tokens), list(range(-1, len(tokens) - 1)))


def depths(parents: list[int]) -> np.ndarray:
    """(n + 1,) each node's distance from the root."""
    d = np.zeros(len(parents), np.int64)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def path_to(parents: list[int], node: int) -> list[int]:
    """The nodes root, ..., node, in order."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def ancestor_mask(parents: list[int]) -> np.ndarray:
    """The tree attention mask, (n + 1, n + 1) bool: row i is True at i and its ancestors.

    Node i may see exactly the tokens of its own path; its siblings and cousins are other
    futures. For a chain this is the causal (lower-triangular) mask.
    """
    n = len(parents)
    mask = np.zeros((n, n), np.bool_)
    for i in range(n):
        mask[i, path_to(parents, i)] = True
    return mask


def tree_mask(parents: list[int], base: int) -> TreeMask:
    """The `TreeMask` of a pass over every node, written from cache row `base` on."""
    return TreeMask(base, ancestor_mask(parents), base + depths(parents))


def compact(cache: KVCache, base: int, path: list[int]) -> None:
    """Keep the accepted path's keys and values, side by side after the prefix; drop the rest.

    path: the nodes kept (root first), as rows base + node of every layer. Node path[j] moves
    to row base + j, where its keys already belong: their RoPE angle is base + depth, and the
    depth of path[j] is j. In place, in increasing order: a node never moves up, so no row is
    overwritten before it has moved. The prefix is not touched.
    """
    for j, node in enumerate(path):
        if node != j:
            cache.keys[:, base + j] = cache.keys[:, base + node]
            cache.values[:, base + j] = cache.values[:, base + node]
    cache.truncate(base + len(path))
