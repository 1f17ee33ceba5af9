"""A separate, cheaper draft model with the same vocabulary (Leviathan et al. 2023, sec. 3).

The classic setup: a small model M_q drafts k tokens autoregressively, the large M_p verifies
them in one forward. Here, offline, the draft is the same Gemma 3 270M with int8 weights (a
quarter of the bytes to stream per token, and it nearly always agrees with float32: the measured
greedy agreement is in docs/benchmarks.md, "int8 weights"); with a Gemma 3 1B
target, the 270M itself. Tests use two tiny random models.

The draft keeps its own KV cache of the tokens it has read. Each proposal first feeds what it
has not seen yet (the whole prompt the first time; afterwards the tokens the target emitted),
then drafts one token per forward. `rollback(n)` truncates its cache to the accepted prefix.
"""

from __future__ import annotations

import numpy as np

from minispec.drafters.base import Draft, DraftContext, choose, make_draft, q_rows
from minispec.drafters.tree_search import Candidates, ancestors_visible, grow_tree
from minispec.errors import InputError
from minispec.kernels import quantize_int8
from minispec.kv_cache import KVCache, new_cache
from minispec.model import Model, TreeMask, forward, forward_hidden, map_matrices
from minispec.sampling import SamplingParams
from minispec.tree import TokenTree


class DraftModelDrafter:
    def __init__(self, draft: Model, name: str | None = None) -> None:
        self.draft = draft
        self.vocab_size = draft.config.vocab_size
        self.name = name or f"draft-model({draft.name or 'model'}, {draft.weights})"
        self.cache: KVCache | None = None
        self.checked: Model | None = None  # the last target whose vocabulary matched
        # Where the latest tree's rows begin in the cache (None: no tree since the last
        # rollback). They are in drafting order, not along a path, so none of them survives.
        self.tree_base: int | None = None

    def reset(self, target: Model) -> None:
        if target is not self.checked:
            check_same_vocabulary(target, self.draft)
            self.checked = target
        self.cache = new_cache(self.draft.config, capacity=256)

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        if self.cache is None:
            self.reset(ctx.target)
        cache = self.cache
        unseen = ctx.tokens[cache.length :]  # never empty: the newest token is always unseen
        logits = forward(self.draft, unseen, cache, last_only=True)[-1]
        tokens, rows = [], []
        qs = q_rows(k, ctx.target.config.vocab_size, sampling)
        for i in range(k):
            token, _ = choose(logits, sampling, rng, out=None if qs is None else qs[i])
            tokens.append(token)
            rows.append(logits)
            if i < k - 1:  # the last draft is never fed: its successor would not be verified
                logits = forward(self.draft, [token], cache)[-1]
        return make_draft(tokens, qs, rows)

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """A draft tree (`tree_search.grow_tree`), one forward of the draft model per depth.

        The unseen context is fed first, as `propose` does; its last row scores the root's
        children. Then each depth's frontier goes into the draft's cache after the context,
        each node seeing the context and its own ancestors (`TreeMask`) at position
        len(context) - 1 + depth. `rollback` then cuts the cache back to the context: the
        accepted nodes are fed again next time with the target's correction, in one pass
        that costs about what one token costs, which is simpler than moving their rows
        (`tree.compact`) and needs no record of which nodes the rule accepted.
        """
        if self.cache is None:
            self.reset(ctx.target)
        cache = self.cache
        row: dict[int, int] = {}  # node -> its row - base (the root is in the context)
        base = len(ctx.tokens)
        self.tree_base = base

        def score(c: Candidates, frontier: list[int]) -> np.ndarray:
            if frontier == [0]:  # the root: the context's last token
                unseen = ctx.tokens[cache.length :]  # never empty: the root is always unseen
                return forward(self.draft, unseen, cache, last_only=True)  # (1, vocab)
            visible = ancestors_visible(c, frontier, row)  # (T, R)
            positions = base - 1 + np.array([c.depths[i] for i in frontier])
            tokens = [c.tokens[i] for i in frontier]
            mask = TreeMask(base, visible, positions)
            return forward_hidden(self.draft, tokens, cache, tree=mask).logits  # (T, vocab)

        return grow_tree(ctx.tokens[-1], score, n_nodes, sampling, rng)

    def rollback(self, n_tokens: int) -> None:
        if self.cache is not None:
            keep = n_tokens if self.tree_base is None else min(n_tokens, self.tree_base)
            self.cache.truncate(min(keep, self.cache.length))
        self.tree_base = None


def check_same_vocabulary(target: Model, draft: Model) -> None:
    """A draft must speak the target's tokens: same size, and the same pieces where known."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise InputError(
            f"the draft model's vocabulary ({draft.config.vocab_size} tokens) is not the "
            f"target's ({target.config.vocab_size} tokens): speculative decoding needs the same one"
        )
    a, b = target.tokenizer, draft.tokenizer
    if a is not None and b is not None and a is not b and a.get_vocab() != b.get_vocab():
        raise InputError(
            "the draft model's tokenizer has the same size as the target's but different "
            "tokens: speculative decoding needs the same vocabulary"
        )


def quantized_copy(model: Model) -> Model:
    """The same model with every matrix in int8 (one scale per row); shares no arrays with it."""
    if model.weights != "float32":
        raise InputError(f"quantized_copy needs a float32 model, this one is {model.weights}")

    params = map_matrices(model.params, quantize_int8)
    name = f"{model.name}-int8" if model.name else "int8"
    return Model(model.config, params, model.tokenizer, name=name, weights="int8")
