"""Early exit (self-speculative decoding): the target's own first layers draft for it.

Zhang et al. 2024 ("Draft & Verify"), Elhoushi et al. 2024 (LayerSkip). Run the first L of the
target's layers, then its final norm and output head, as if the model ended there:

    h_L = block_{L-1}(... block_0(embed(x)))        q = softmax(final_norm(h_L) @ head.T)

No second model, and no second KV cache: the first L layers' keys and values *are* the target's,
so the drafter writes them straight into the target's cache. The prompt is never recomputed;
drafted positions are written, then the length is restored, and verification rewrites them.

Two honest caveats:
- Gemma 3 270M was not trained to exit early (LayerSkip trains for it), so a shallow exit
  rarely agrees with the full model's argmax, and even L=15 of 18 agrees far from always
  (the measured acceptance rate alpha is in docs/benchmarks.md, "Speculative decoding").
- The output head (262,144 x 640, tied to the embedding) is 63 % of the weights. A draft that
  pays for the full head costs L/18 of the layers *plus* the whole head: at L=12 about 88 % of
  a target forward, so it cannot win. `head_size=N` scores only N candidate tokens — a
  corpus-free guess at the most used ones (`frequent_ids`: the vocabulary's most frequent
  characters, then its earliest merges) plus every token of the context (names in code
  repeat) — which cuts the head's cost by about 262,144 / N. A target argmax outside the
  candidates can never be drafted (with N = 16,384, a few percent of positions), but the
  shallow exit's argmax over *all* tokens is often a rare token the full model would never
  pick, so the restricted head agrees *more* often than the full one.
  The rule stays exact either way: q is 0 outside the candidates.
"""

from __future__ import annotations

import numpy as np

from minispec.drafters.base import Draft, DraftContext, choose, make_draft, q_rows
from minispec.drafters.tree_search import Candidates, ancestors_visible, grow_tree
from minispec.errors import InputError
from minispec.kernels import linear, select_rows
from minispec.kv_cache import KVCache
from minispec.model import Model, TreeMask, Weight, forward_hidden, rms_norm
from minispec.sampling import SamplingParams
from minispec.tree import TokenTree


def early_exit_hidden(
    model: Model,
    tokens: list[int],
    cache: KVCache,
    n_layers: int,
    tree: TreeMask | None = None,
) -> np.ndarray:
    """The first n_layers blocks, then the final norm: the early exit's h, shape (T, d_model).

    Writes keys/values of layers [0, n_layers) to the cache and advances its length.
    tree: the tokens are draft-tree nodes (`TreeMask`), each seeing its own path only.
    """
    out = forward_hidden(model, tokens, cache, n_layers=n_layers, head=False, tree=tree)
    return rms_norm(out.hidden, model.params.final_norm, model.config.rms_norm_eps)


class EarlyExitDrafter:
    """Draft with the target's first `n_layers` layers; `head_size` limits the scored tokens.

    n_layers None: `default_exit_layer`. head_size None or >= the vocabulary: the full head.
    """

    def __init__(self, target: Model, n_layers: int | None = None, head_size: int | None = None):
        total = target.config.num_hidden_layers
        if n_layers is None:
            n_layers = default_exit_layer(total)
        if not 1 <= n_layers < total:
            raise InputError(f"early exit needs 1 <= n_layers < {total} (the target's layers)")
        vocab = target.config.vocab_size
        if head_size is not None and not 1 <= head_size <= vocab:
            raise InputError(f"head_size must be in [1, {vocab}], got {head_size}")
        self.target, self.n_layers, self.vocab_size = target, n_layers, vocab
        self.head_size = None if head_size is None or head_size == vocab else head_size
        self.name = f"early-exit(L={n_layers}/{total}" + (
            f", head {self.head_size})" if self.head_size else ")"
        )
        # The frequent part of the cheap head, gathered once: (head_size, d_model).
        self.frequent = frequent_ids(target, self.head_size) if self.head_size else None
        self.frequent_head = (
            select_rows(target.params.embed, self.frequent) if self.head_size else None
        )

    def reset(self, target: Model) -> None:
        if target is not self.target:
            raise ValueError("an early-exit drafter drafts only for the model it was built from")

    def context_rows(self, context: list[int]) -> tuple[np.ndarray, Weight] | None:
        """The context's tokens the frequent head misses, with their head rows: (ids, rows)."""
        if self.frequent_head is None:
            return None
        ids = np.setdiff1d(np.asarray(context, dtype=np.int64), self.frequent)  # sorted, unique
        return (ids, select_rows(self.target.params.embed, ids)) if ids.size else None

    def head(self, h: np.ndarray, extra: tuple[np.ndarray, Weight] | None) -> np.ndarray:
        """Head scores for one normalised hidden state h (1, d_model), full width (vocab,)."""
        return self.head_rows(h, extra)[0]

    def head_rows(self, h: np.ndarray, extra: tuple[np.ndarray, Weight] | None) -> np.ndarray:
        """Head scores for normalised hidden states h (T, d_model), full width (T, vocab)."""
        if self.frequent_head is None:
            return linear(h, self.target.params.embed)  # (T, vocab): all 262,144 rows
        out = np.full((len(h), self.vocab_size), -np.inf, dtype=np.float32)  # unscored: q = 0
        out[:, self.frequent] = linear(h, self.frequent_head)
        if extra is not None:
            ids, rows = extra
            out[:, ids] = linear(h, rows)
        return out

    def scored_ids(self, extra: tuple[np.ndarray, Weight] | None) -> np.ndarray | None:
        """The tokens the cut-down head scores, sorted, for `draft_q` (None: the full head)."""
        if self.frequent_head is None:
            return None
        return np.sort(self.frequent if extra is None else np.union1d(self.frequent, extra[0]))

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        cache = ctx.target_cache
        start = cache.length  # = len(ctx.tokens) - 1: the newest token is not in the cache yet
        extra = self.context_rows(ctx.tokens)  # gathered once per proposal
        scored = None if sampling.greedy else self.scored_ids(extra)  # greedy: no q
        tokens, rows, last = [], [], ctx.tokens[-1]
        qs = q_rows(k, ctx.target.config.vocab_size, sampling)
        for i in range(k):
            h = early_exit_hidden(self.target, [last], cache, self.n_layers)  # (1, d_model)
            logits = self.head(h, extra)  # (vocab,)
            last, _ = choose(logits, sampling, rng, scored, out=None if qs is None else qs[i])
            tokens.append(last)
            rows.append(logits)
        cache.truncate(start)  # leave the cache as found; verification rewrites these positions
        return make_draft(tokens, qs, rows, scored)

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """A draft tree (`tree_search.grow_tree`), one pass of the first L layers per depth.

        The frontier's rows go into the target's cache after the rows already drafted (the
        root's first), each seeing the prefix and its own ancestors (`TreeMask`) at position
        start + depth, exactly the keys the chain would have written along that path. The
        cache's length is restored afterwards; verification rewrites those rows.
        """
        cache = ctx.target_cache
        start = cache.length  # the root's row: the newest token is not in the cache yet
        extra = self.context_rows(ctx.tokens)  # gathered once per proposal
        row: dict[int, int] = {}  # node -> its row - start

        def score(c: Candidates, frontier: list[int]) -> np.ndarray:
            visible = ancestors_visible(c, frontier, row)  # (T, R)
            positions = start + np.array([c.depths[i] for i in frontier])
            tokens = [c.tokens[i] for i in frontier]
            mask = TreeMask(start, visible, positions)
            h = early_exit_hidden(self.target, tokens, cache, self.n_layers, mask)  # (T, D)
            return self.head_rows(h, extra)  # (T, vocab)

        try:
            scored = self.scored_ids(extra)
            return grow_tree(ctx.tokens[-1], score, n_nodes, sampling, rng, scored)
        finally:
            cache.truncate(start)  # leave the cache as found

    def rollback(self, n_tokens: int) -> None:
        pass  # its only state is the target's cache, which the loop rolls back


def frequent_ids(model: Model, n: int, n_chars: int = 512) -> np.ndarray:
    """A corpus-free guess at a model's n most used tokens, from its vocabulary's order.

    A SentencePiece BPE vocabulary (Gemma's) lists control, user-defined and byte tokens first,
    then merged pieces by merge rank (earlier merges were more frequent in its training corpus),
    then the single characters, most frequent first (Gemma 3: 236,743 "▁", 236,744 "e", ...).
    Characters and punctuation are among the most used tokens of code and prose, so: the first
    n_chars single characters, then the lowest ids. Without such a block (the tiny models' byte
    vocabulary), the lowest ids. On Gemma 3 with n = 16,384 this covers most tokens of Python
    sources and of English prose, clearly more than the lowest 16,384 ids alone.
    """
    n = min(n, model.config.vocab_size)
    first_char = first_character_id(model)
    if first_char is None:
        return np.arange(n)
    chars = np.arange(
        first_char, min(first_char + n_chars, model.config.vocab_size, first_char + n)
    )
    return np.concatenate([np.arange(n - chars.size), chars])


def first_character_id(model: Model) -> int | None:
    """Where the block of single-character pieces begins, if the vocabulary has one."""
    if model.tokenizer is None:
        return None
    vocab = model.tokenizer.get_vocab()  # piece -> id
    last_byte = max((i for piece, i in vocab.items() if piece.startswith("<0x")), default=-1)
    singles = [i for piece, i in vocab.items() if len(piece) == 1 and i > last_byte]
    return min(singles) if len(singles) > 1 else None


def default_exit_layer(n_layers: int) -> int:
    """Five sixths of the way up (Gemma 3 270M: L=15 of 18, about half the argmaxes agree)."""
    return max(1, min(n_layers - 1, round(5 * n_layers / 6)))


def default_head_size(model: Model) -> int | None:
    """16,384 candidates for a large vocabulary (Gemma's 262,144: a 16x cheaper head); else all."""
    return 16_384 if model.config.vocab_size >= 4 * 16_384 else None
