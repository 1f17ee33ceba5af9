"""Prompt lookup: draft by copying what followed the same n-gram earlier in the context.

Saxena 2023 ("prompt lookup decoding"), the n-gram variant of Yang et al. 2023 (LLMA). When a
model edits code or quotes its input, the next tokens often already appear in the context: find
the longest recent suffix n-gram (n = max_n down to min_n) that occurred before, and propose the
k tokens that followed its most recent earlier occurrence. No model, no probabilities (q is
one-hot on the copied token), almost no cost: a miss just means a plain decoding step. As a
tree: what followed each of its latest few occurrences, one trie (shared beginnings merged).
"""

from __future__ import annotations

import numpy as np

from minispec.drafters.base import Draft, DraftContext
from minispec.errors import InputError
from minispec.model import Model
from minispec.sampling import SamplingParams
from minispec.tree import TOP, TokenTree


def lookup(tokens: list[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """The up to k tokens that followed the latest earlier match of the longest suffix n-gram."""
    found = continuations(tokens, k, max_n, min_n, limit=1)
    return found[0] if found else []


def continuations(
    tokens: list[int], k: int, max_n: int = 3, min_n: int = 1, limit: int = 4
) -> list[list[int]]:
    """What followed the longest suffix n-gram's `limit` latest earlier matches, latest first:
    up to k tokens each (none when no n-gram of max_n down to min_n tokens occurred before)."""
    seq = np.asarray(tokens, dtype=np.int64)  # (S,)
    for n in range(min(max_n, len(seq) - 1), min_n - 1, -1):
        suffix = seq[-n:]
        # windows[i] = seq[i : i + n], for every start i whose n-gram ends before the suffix
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # (S - n, n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        if starts.size:
            follows = starts[::-1][:limit] + n  # the most recent matches first
            return [seq[f : f + k].tolist() for f in follows]
    return []


def trie(root: int, branches: list[list[int]], n_nodes: int) -> TokenTree:
    """The branches as one tree under root, shared prefixes merged, at most n_nodes nodes.

    Filled depth by depth, the branches in their order at each depth, so that when the budget
    runs out every branch has about the same depth, and the first branch's token comes first
    among siblings (the order the rule tries them in).
    """
    tokens, parents = [root], [-1]
    node_of: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    at = [0] * len(branches)  # each branch's deepest node so far
    for depth in range(max((len(b) for b in branches), default=0)):
        for i, branch in enumerate(branches):
            if depth >= len(branch):
                continue
            key = (at[i], branch[depth])
            if key not in node_of:
                if len(tokens) > n_nodes:
                    return TokenTree(tokens, parents, TOP)
                node_of[key] = len(tokens)
                tokens.append(branch[depth])
                parents.append(at[i])
            at[i] = node_of[key]
    return TokenTree(tokens, parents, TOP)


class NgramDrafter:
    """Prompt lookup with n-grams of max_n down to min_n tokens."""

    vocab_size = None  # copies tokens from the context: any vocabulary

    # A tree copies the latest 4 matches' continuations, the model drafters' width: older
    # ones rarely differ from all of these, and each costs budget where they disagree.
    width = 4

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise InputError(f"n-gram sizes need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.name = f"ngram({max_n}..{min_n})"

    def reset(self, target: Model) -> None:
        pass  # stateless: every proposal reads the context afresh

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        return Draft(lookup(ctx.tokens, k, self.max_n, self.min_n), q=None)

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """The continuations of the latest `width` matches as a trie (`trie`); one match: a
        chain. Deterministic copies (`TOP`, no q), in sampled mode too."""
        found = continuations(ctx.tokens, n_nodes, self.max_n, self.min_n, self.width)
        return trie(ctx.tokens[-1], found, n_nodes)

    def rollback(self, n_tokens: int) -> None:
        pass
