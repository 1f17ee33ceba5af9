"""A drafter that falls back: ask the first drafter, and the next only when it has nothing.

`ngram+mtp` is the use it was made for: prompt lookup costs almost nothing and, when the text
repeats itself (a small base model often does, and so does code being edited), it is right
for many tokens in a row; when the suffix n-gram has no earlier match it proposes nothing, and
the MTP drafter, which always has a guess, drafts instead. One step's draft comes wholly from
one drafter (one step's tree too), so in sampled mode q is still exactly the distribution its
tokens were drawn from (one-hot for prompt lookup, a deterministic copy): the acceptance rule
of Leviathan et al. 2023 needs nothing more, and the output keeps the target's distribution.
"""

from __future__ import annotations

import numpy as np

from minispec.drafters.base import Draft, DraftContext, Drafter
from minispec.errors import InputError
from minispec.model import Model
from minispec.sampling import SamplingParams
from minispec.tree import TokenTree


class FallbackDrafter:
    """Drafters in order of preference: each step, the first that proposes any token drafts."""

    def __init__(self, drafters: list[Drafter]) -> None:
        if len(drafters) < 2:
            raise InputError("a fallback drafter needs at least two drafters, e.g. ngram+mtp")
        self.drafters = drafters
        self.name = "+".join(d.name for d in drafters)
        vocabs = {d.vocab_size for d in drafters if d.vocab_size is not None}
        if len(vocabs) > 1:
            raise InputError(f"{self.name}: its drafters have different vocabularies {vocabs}")
        self.vocab_size = vocabs.pop() if vocabs else None
        self.last_used = ""  # the name of the drafter that made the latest draft

    def reset(self, target: Model) -> None:
        for d in self.drafters:
            d.reset(target)

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        for d in self.drafters:
            draft = d.propose(ctx, k, sampling, rng)
            if draft.tokens:
                self.last_used = d.name
                return draft
        self.last_used = ""
        return Draft([])

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """The tree of the first drafter that proposes any node (a root alone: none did)."""
        for d in self.drafters:
            tree = d.propose_tree(ctx, n_nodes, sampling, rng)
            if tree.n_drafted:
                self.last_used = d.name
                return tree
        self.last_used = ""
        return TokenTree([ctx.tokens[-1]], [-1])

    def rollback(self, n_tokens: int) -> None:
        # Every drafter forgets the rejected tokens, also those that did not draft them: a
        # drafter with a cache of its own has seen the context (and only it) all the same.
        for d in self.drafters:
            d.rollback(n_tokens)
