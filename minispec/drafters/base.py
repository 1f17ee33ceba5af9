"""The drafter protocol: what the speculative loop asks of anything that guesses ahead.

Notation as in Leviathan et al. 2023: p is the target's distribution, q the draft's.

Each step the loop hands the drafter a `DraftContext` (the tokens so far, the target's KV cache
and its last hidden state) and asks for up to k tokens. The drafter answers with a `Draft`: the
tokens and, when it has them, the distributions q it drew them from. A drafter without
distributions (prompt lookup) leaves q as None and the loop treats q as one-hot on its token.

A tree of guesses (`minispec.tree.TokenTree`: several continuations, verified in one pass) is
asked for with `propose_tree(ctx, n_nodes, ...)`; a chain is the tree with one child per node.
Model drafters grow theirs with `tree_search.grow_tree`.

After the target has verified the draft, the loop calls `rollback(n)`: only the first n tokens
the drafter has seen (context plus its own drafts) survived, so it must forget the rest.

The context carries the target's hidden state so a drafter trained on it (a multi-token-
prediction or Medusa head, Cai et al. 2024) fits the same protocol: it reads `target_hidden`
and the embedding of the newest token, and needs no cache of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np

from minispec.kv_cache import KVCache
from minispec.model import Model
from minispec.sampling import SamplingParams, distribution, sample
from minispec.tree import TokenTree


@dataclass
class DraftContext:
    """What the drafter may look at. Read-only, except as the docstrings of drafters say."""

    tokens: list[int]  # the prompt and every token emitted so far; the last is not yet in the cache
    target: Model
    target_cache: KVCache  # holds tokens[:-1]; a drafter that writes to it restores its length
    # (d_model,): the target's last block output, the one that predicted tokens[-1]
    target_hidden: np.ndarray


@dataclass
class Draft:
    tokens: list[int]  # (n,) proposed continuation, n <= k (n = 0: nothing to propose)
    # (n, vocab): when sampling, the distribution each token was drawn from; None: one-hot (a
    # drafter without probabilities) or greedy decoding, whose rule needs no q
    q: np.ndarray | None = None
    # n rows (vocab,): a model drafter's raw scores, for the trace (stacked only when read:
    # most runs record no trace, and a stack of k rows of 262,144 costs a fair part of a step)
    logit_rows: list[np.ndarray] | None = None
    # the tokens a cheap head scores, sorted (the rest of each row is -inf), when the drafter
    # knows them: a greedy trace's q rows are then shown over them alone (`SoftmaxRow`)
    scored: np.ndarray | None = None

    @cached_property
    def logits(self) -> np.ndarray | None:
        """(n, vocab): the drafter's raw scores, row i for d_i; None without a model."""
        return None if self.logit_rows is None else np.stack(self.logit_rows)


@runtime_checkable
class Drafter(Protocol):
    name: str
    vocab_size: int | None  # None: works with any vocabulary (prompt lookup)

    def reset(self, target: Model) -> None:
        """A new generation begins: drop all state; raise if it cannot draft for this target."""

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        """Up to k tokens that should follow ctx.tokens."""

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """A tree of at most n_nodes drafted tokens; its root is ctx.tokens[-1]."""

    def rollback(self, n_tokens: int) -> None:
        """The first n_tokens of (context + drafts) were accepted: forget what came after."""


# ------------------------------------------------------------------- shared by model drafters


def choose(
    logits: np.ndarray,
    sampling: SamplingParams,
    rng: np.random.Generator,
    scored: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[int, np.ndarray | None]:
    """A model drafter's pick from one row of logits: (token, q). Greedy: (argmax, None).

    q is `draft_q`'s. scored: the tokens a cheap head scores, in increasing order, when the
    drafter knows them (else found here). out: a row of zeros (`q_rows`) to write q into.
    """
    if sampling.greedy:
        return int(np.argmax(logits)), None
    if scored is None and logits.min() == -np.inf:
        scored = np.flatnonzero(logits > -np.inf)  # (n,) the tokens the head scored
    q = draft_q(logits, sampling, scored, out)
    if scored is None:  # a full head
        return sample(q, rng), q
    # drawn over the scored tokens alone: the same token, without a pass over all 262,144
    return int(scored[sample(q[scored], rng)]), q


def draft_q(
    logits: np.ndarray,
    sampling: SamplingParams,
    scored: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """A model drafter's distribution q over one row of logits, (vocab,) float64.

    A cheap head scores a subset of the vocabulary and leaves the rest at -inf, probability 0:
    q is then computed over the scored tokens alone (the same distribution, zero elsewhere),
    since temperature and top-p over all 262,144 took longer than the draft step itself.
    scored: those tokens' ids in increasing order, when the drafter knows them (else found here).
    out: a row of zeros to write q into. The very q `choose` samples from.
    """
    if scored is None and logits.min() > -np.inf:  # a full head
        return distribution(logits, sampling, out)
    if scored is None:
        scored = np.flatnonzero(logits > -np.inf)  # (n,) the tokens the head scored
    q = np.zeros(logits.shape, dtype=np.float64) if out is None else out
    q[scored] = distribution(logits[scored], sampling)
    return q


def q_rows(k: int, vocab_size: int, sampling: SamplingParams) -> np.ndarray | None:
    """Zeroed rows (k, vocab) for a model drafter's distributions q, which `choose` fills in
    place (so the Draft takes them without copying 2 MB rows); None when greedy: no q."""
    return None if sampling.greedy else np.zeros((k, vocab_size))


def one_hot(tokens: list[int], vocab_size: int) -> np.ndarray:
    """q for a drafter without probabilities: all its mass on its own token, (n, vocab)."""
    q = np.zeros((len(tokens), vocab_size))
    q[np.arange(len(tokens)), tokens] = 1.0
    return q


def make_draft(
    tokens: list[int], q: np.ndarray | None, logits: list, scored: np.ndarray | None = None
) -> Draft:
    """Pack a model drafter's picks: its q rows (`q_rows`, None when greedy), its logits and
    the tokens its head scores (None: unknown, or the full vocabulary)."""
    if not tokens:
        return Draft([])
    return Draft(tokens, None if q is None else q[: len(tokens)], list(logits), scored)
