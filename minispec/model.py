"""Gemma 3 (text), forward pass in NumPy: the equations, top to bottom.

Read beside the Gemma 3 technical report (2025) and Hugging Face's `modeling_gemma3.py`:

    x = embed[tokens] * sqrt(d_model)
    for each layer:
        x = x + post_attn_norm(attention(input_norm(x)))
        x = x + post_ffw_norm(mlp(pre_ffw_norm(x)))
    logits = final_norm(x) @ embed.T              (the output head is the embedding, tied)

Two paths through the same equations, chosen by `Model.fast` (`ops` picks each one's
arithmetic, in this one place):
- fast=True (what `load_model` gives): the weights are packed for the Numba kernels
  (`kernels.pack`), which read each weight once per pass whatever the number of tokens, and
  attention, the norms, RoPE and the GeGLU run `attend`'s, `rms_norm`'s, `rope`'s and
  `gelu_tanh`'s arithmetic in kernels too (`kernels.attend_each`, `rms_norm_rows`, `rope_rows`,
  `gelu_gate`). Batch invariant: a row's result does not depend on how many rows were computed
  with it.
- fast=False (`reference(model)`, or `load_model(fast=False)`): plain NumPy all the way,
  `x @ w.T` through BLAS and `attend` one query at a time. The readable path; the tests hold
  the fast one to it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minispec import kernels
from minispec.checkpoint import layer_shapes, layer_tensor
from minispec.config import GemmaConfig
from minispec.errors import InputError
from minispec.kernels import PackedWeight, linear, pack, quantize_int8, take_rows
from minispec.kv_cache import KVCache

# (d_out, d_in): packed float32 or int8 (one scale per row), or a plain float32 matrix
Weight = PackedWeight | np.ndarray


@dataclass
class Layer:
    """One transformer block's weights, named as in the Hugging Face checkpoint."""

    input_layernorm: np.ndarray  # (d_model,)
    q_proj: Weight  # (n_heads * head_dim, d_model)
    k_proj: Weight  # (n_kv_heads * head_dim, d_model)
    v_proj: Weight  # (n_kv_heads * head_dim, d_model)
    q_norm: np.ndarray  # (head_dim,)
    k_norm: np.ndarray  # (head_dim,)
    o_proj: Weight  # (d_model, n_heads * head_dim)
    post_attention_layernorm: np.ndarray  # (d_model,)
    pre_feedforward_layernorm: np.ndarray  # (d_model,)
    gate_proj: Weight  # (d_ff, d_model)
    up_proj: Weight  # (d_ff, d_model)
    down_proj: Weight  # (d_model, d_ff)
    post_feedforward_layernorm: np.ndarray  # (d_model,)


@dataclass
class Params:
    embed: Weight  # (vocab, d_model), also the output head
    layers: list[Layer]
    final_norm: np.ndarray  # (d_model,)


@dataclass
class Model:
    """What `load_model` returns: the architecture, its weights and (when known) its tokenizer."""

    config: GemmaConfig
    params: Params
    tokenizer: object | None = None  # a `tokenizers.Tokenizer`
    name: str = ""
    weights: str = "float32"  # "float32" or "int8"
    fast: bool = True  # the Numba kernels (packed weights); False: plain NumPy, `reference`


# ----------------------------------------------------------------------------- the equations


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm with Gemma's (1 + w) gain: x / sqrt(mean(x^2) + eps) * (1 + w).

    Zhang & Sennrich 2019. Gemma stores w around 0, so a freshly initialised norm is the identity.
    """
    rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x / rms * (1.0 + w)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016).

    gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    """
    # x * x * x, not x**3: NumPy's float32 power is a general pow, many times slower.
    return (
        0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * (x * x * x))))
    )


def rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotary position embedding, rotate-half form (Su et al. 2021, RoFormer, eq. 34).

    Pairs dimension i with i + d/2 and rotates the pair by angle pos * base^(-2i/d), so that
    q . k depends only on the distance between their positions.
    """
    # x: (T, n_heads, head_dim)
    d = x.shape[-1]
    cos, sin = rope_angles(positions, base, d)  # (T, d/2) each
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, d/2)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): x cos + rotate_half(x) sin, written out
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_angles(positions: np.ndarray, base: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angles pos * base^(-2i/d), i < d/2: two (T, d/2) float32 arrays.

    Looked up in a table of every position up to a power of two (at least 1024), computed once
    per (base, d) and kept: computing them afresh took a prompt as long as all its norms.
    A position's angles are the same numbers whichever table holds them.
    """
    size = 1 << max(10, int(np.max(positions)).bit_length())
    cos, sin = _rope_table(float(base), d, size)
    return cos[positions], sin[positions]


@functools.lru_cache(maxsize=8)
def _rope_table(base: float, d: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    angles = np.arange(size, dtype=np.float64)[:, None] * inv_freq  # (size, d/2)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def key_bounds(positions: np.ndarray, window: int | None) -> np.ndarray:
    """Causal mask, and on sliding layers the window: query i sees key j iff 0 <= i - j < window.

    The keys each position sees, as (T, 2) bounds: start <= j < stop.
    """
    start = np.zeros_like(positions) if window is None else np.maximum(0, positions - window + 1)
    return np.stack([start, positions + 1], axis=1)  # (T, 2)


def visible_keys(position: int, window: int | None) -> slice:
    """The keys one position sees, as a slice of the cache (`key_bounds` of one position)."""
    start, stop = key_bounds(np.array([position]), window)[0]
    return slice(int(start), int(stop))


def key_mask(bounds: np.ndarray, n_keys: int) -> np.ndarray:
    """Bounds as a (T, n_keys) bool mask: row t is True at keys start_t <= j < stop_t.

    For attention written with a mask (the drafter's training, batched) instead of bounds.
    """
    j = np.arange(n_keys)
    return (bounds[:, :1] <= j) & (j < bounds[:, 1:])


def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scaled dot-product attention of one query position (Vaswani et al. 2017, eq. 1).

    Grouped-query attention (Ainslie et al. 2023): the n_heads query heads are split into
    n_kv_heads groups, and every head in a group reads the same key/value head.
    """
    # q: (n_heads, head_dim), already scaled; keys, values: (S, n_kv_heads, head_dim)
    n_heads, n_kv = q.shape[0], keys.shape[1]
    group = n_heads // n_kv
    out = np.empty_like(q)
    for h in range(n_kv):
        heads = slice(h * group, (h + 1) * group)
        scores = q[heads] @ keys[:, h].T  # (group, S)
        out[heads] = softmax(scores) @ values[:, h]  # (group, head_dim)
    return out


def attend_rows(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    bounds: np.ndarray,
    base: int | None = None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """`attend` for each query t over its keys bounds[t, 0] <= j < bounds[t, 1] (`key_bounds`).

    q: (T, n_heads, head_dim), scaled; keys, values: (S, n_kv_heads, head_dim). (T, n_heads,
    head_dim). The readable twin of `kernels.attend_each`, which takes the same arguments.
    A token tree (`TreeMask`): from key `base` on, query t sees key j only if visible[t, j - base].
    """
    out = []
    for t, (start, stop) in enumerate(bounds):
        seen = np.arange(start, stop)  # (S_t,) the keys query t reads, in order
        if visible is not None:
            seen = seen[(seen < base) | visible[t, np.maximum(seen - base, 0)]]
        out.append(attend(q[t], keys[seen], values[seen]))
    return np.stack(out)


@dataclass
class TreeMask:
    """The tree attention mask of a pass over token-tree nodes (SpecInfer, Miao et al. 2024).

    The tree's nodes sit in the cache from row `base` on, in the order they were written, not
    in positions: node i of depth d stands at position base + d of its own path (its RoPE
    angle) wherever it is stored. Each new query t sees the prefix (rows before base, within
    its sliding window) and, among the tree's rows, only visible[t, r] ones: its ancestors and
    itself. A chain is the tree whose mask is lower triangular.
    """

    base: int  # the cache row of the tree's first node (the prefix's length)
    visible: np.ndarray  # (T, R) bool: new query t sees cache row base + r
    positions: np.ndarray  # (T,) int: each new query's position, base + its depth


def rope_kernel(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """`rope` in one Numba pass (`kernels.rope_rows`): the same bits."""
    cos, sin = rope_angles(positions, base, x.shape[-1])
    return kernels.rope_rows(x, cos, sin)


def gelu_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """GeGLU's gating: gelu(gate) * up (`kernels.gelu_gate` is the same in one pass)."""
    return gelu_tanh(gate) * up


def matmul_t(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T through NumPy's BLAS, in x's own precision (any leading dimensions)."""
    return x @ w.T


@dataclass(frozen=True)
class Ops:
    """One path's arithmetic for the equations above; `ops(fast)` picks the path."""

    # x @ w.T. The model's own products call `kernels.linear`, which goes by the weight's kind
    # (packed on the fast path, plain on the other): the same choice. The drafter's plain
    # weights may be float64 (gradient checks), which only NumPy's product takes.
    linear: Callable[[np.ndarray, Weight], np.ndarray]
    rms_norm: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    rope: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    gelu_gate: Callable[[np.ndarray, np.ndarray], np.ndarray]  # gelu(gate) * up
    # (q, keys, values, bounds[, base, visible]): `attend_rows`' arguments
    attend: Callable[..., np.ndarray]


FAST = Ops(
    kernels.linear, kernels.rms_norm_rows, rope_kernel, kernels.gelu_gate, kernels.attend_each
)
READABLE = Ops(matmul_t, rms_norm, rope, gelu_gate, attend_rows)


def ops(fast: bool) -> Ops:
    """The Numba kernels (packed weights, batch invariant) or plain NumPy: `Model.fast`."""
    return FAST if fast else READABLE


Caches = KVCache | list[KVCache]


def segments(cache: Caches, T: int) -> list[tuple[KVCache, slice]]:
    """Which rows of a T-row pass extend which cache.

    One KVCache: all T rows, the next T positions of one sequence. A list of T caches: row t is
    the newest token of sequence t (`forward_each`, several sequences decoded at once).
    """
    if isinstance(cache, KVCache):
        return [(cache, slice(0, T))]
    if len(cache) != T:
        raise ValueError(f"forward: {T} tokens for {len(cache)} caches; give one token per cache")
    return [(c, slice(t, t + 1)) for t, c in enumerate(cache)]


def attention(
    x: np.ndarray,
    layer: Layer,
    cache: Caches,
    i: int,
    config: GemmaConfig,
    fast: bool = True,
    tree: TreeMask | None = None,
) -> np.ndarray:
    """Self-attention of layer i for T new positions; their keys and values join the cache.

    cache: one KVCache, or one per row (`segments`): the products take every row at once, and
    each row's keys and values go into, and its query reads, its own sequence's cache only.
    fast: `ops(fast)`, the Numba kernels (`attend`'s, `rms_norm`'s and `rope`'s arithmetic);
    False: `attend` itself, query by query, and NumPy's `rms_norm` and `rope`.
    tree: the rows are token-tree nodes (one cache): their positions and mask (`TreeMask`).
    """
    T, parts = x.shape[0], segments(cache, x.shape[0])
    n_heads, n_kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    positions = np.concatenate([np.arange(c.length, c.length + r.stop - r.start) for c, r in parts])
    if tree is not None:  # a node's angle is its place in its own path, not its cache row
        positions = tree.positions
    sliding = config.is_sliding(i)
    base = config.rope_local_base_freq if sliding else config.rope_theta

    op = ops(fast)
    norm = op.rms_norm
    q = linear(x, layer.q_proj).reshape(T, n_heads, hd)  # (T, n_heads, head_dim)
    k = linear(x, layer.k_proj).reshape(T, n_kv, hd)  # (T, n_kv_heads, head_dim)
    v = linear(x, layer.v_proj).reshape(T, n_kv, hd)
    # Gemma 3 normalises queries and keys per head before RoPE ("QK-norm", report sec. 2).
    q, k = norm(q, layer.q_norm, config.rms_norm_eps), norm(k, layer.k_norm, config.rms_norm_eps)
    q, k = op.rope(q, positions, base), op.rope(k, positions, base)
    q = q * np.float32(config.query_pre_attn_scalar**-0.5)

    window = config.sliding_window if sliding else None
    out = np.empty_like(q)  # (T, n_heads, head_dim)
    for c, r in parts:
        out[r] = attend_cached(q[r], k[r], v[r], c, i, positions[r], window, fast, tree)
    return linear(out.reshape(T, n_heads * hd), layer.o_proj)  # (T, d_model)


def attend_cached(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    cache: KVCache,
    i: int,
    positions: np.ndarray,
    window: int | None,
    fast: bool = True,
    tree: TreeMask | None = None,
) -> np.ndarray:
    """Write the new keys and values into layer i's cache, then attend each query over it."""
    start = cache.length
    cache.keys[i, start : start + len(k)] = k
    cache.values[i, start : start + len(v)] = v
    # Each query over exactly the keys it may see (the kernel gives the others probability 0,
    # an exact no-op): a position's result is then the same computation whether it is decoded
    # alone, verified with k others or prefilled with its prompt.
    bounds = key_bounds(positions, window)  # (T, 2)
    if tree is None:
        return ops(fast).attend(q, cache.keys[i], cache.values[i], bounds)  # (T, n_heads, hd)
    # A tree node reads the prefix (rows before base, its window cut at its path's position)
    # and, of the rows from base on, those its mask shows: up to its own row, start + t.
    bounds[:, 1] = start + np.arange(len(q)) + 1
    return ops(fast).attend(q, cache.keys[i], cache.values[i], bounds, tree.base, tree.visible)


def mlp(x: np.ndarray, layer: Layer, fast: bool = True) -> np.ndarray:
    """Gated feed-forward (GeGLU, Shazeer 2020): down(gelu(gate(x)) * up(x)).

    fast: gelu(gate) * up in one Numba pass (`kernels.gelu_gate`); False: `gelu_tanh` in NumPy.
    """
    gate, up = linear(x, layer.gate_proj), linear(x, layer.up_proj)  # (T, d_ff) each
    h = ops(fast).gelu_gate(gate, up)
    return linear(h, layer.down_proj)


def block(
    x: np.ndarray,
    layer: Layer,
    cache: Caches,
    i: int,
    config: GemmaConfig,
    fast: bool = True,
    tree: TreeMask | None = None,
) -> np.ndarray:
    """One transformer block with Gemma's four norms: pre- and post-norm around each sublayer."""
    eps = config.rms_norm_eps
    norm = ops(fast).rms_norm
    h = attention(norm(x, layer.input_layernorm, eps), layer, cache, i, config, fast, tree)
    x = x + norm(h, layer.post_attention_layernorm, eps)
    h = mlp(norm(x, layer.pre_feedforward_layernorm, eps), layer, fast)
    return x + norm(h, layer.post_feedforward_layernorm, eps)


def embed(tokens: np.ndarray, embedding: Weight, d_model: int) -> np.ndarray:
    """Token embedding, scaled by sqrt(d_model) as in Gemma (the head uses the unscaled matrix)."""
    return take_rows(embedding, tokens) * np.float32(np.sqrt(d_model))  # (T, d_model)


@dataclass
class ForwardOutput:
    logits: np.ndarray | None  # (T, vocab), (1, vocab) with last_only, None with head=False
    hidden: np.ndarray  # (T, d_model): the last block's output, before the final norm


def forward_hidden(
    model: Model,
    tokens: np.ndarray | list[int],
    cache: Caches,
    *,
    n_layers: int | None = None,
    last_only: bool = False,
    head: bool = True,
    tree: TreeMask | None = None,
) -> ForwardOutput:
    """`forward`, also returning the hidden state; `n_layers` stops early (self-speculation).

    With n_layers < all, only those layers' caches are written; the caller rolls the cache back.
    head=False skips the output head (logits None): an early exit scores its own tokens.
    cache: a list of caches, one per token, decodes several sequences at once (`forward_each`).
    tree: the tokens are nodes of a token tree (`TreeMask`; one cache): each attends to the
    prefix and its own ancestors, at its own path's position.
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        raise ValueError("forward: no tokens to process")
    config, params = model.config, model.params
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        raise ValueError(f"forward: token ids must be in [0, {config.vocab_size})")
    parts = segments(cache, tokens.size)
    for c, r in parts:
        c.reserve(r.stop - r.start)
    x = embed(tokens, params.embed, config.hidden_size)  # (T, d_model)
    if tree is not None and (len(parts) != 1 or tree.visible.shape[0] != tokens.size):
        raise ValueError("forward: a tree mask needs one cache and one mask row per token")
    for i, layer in enumerate(params.layers[:n_layers]):
        x = block(x, layer, cache, i, config, model.fast, tree)
    for c, r in parts:
        c.length += r.stop - r.start
    if not head:
        return ForwardOutput(logits=None, hidden=x)
    h = x[-1:] if last_only else x
    norm = ops(model.fast).rms_norm
    logits = linear(norm(h, params.final_norm, config.rms_norm_eps), params.embed)
    return ForwardOutput(logits=logits, hidden=x)


def forward(
    model: Model, tokens: np.ndarray | list[int], cache: KVCache, *, last_only: bool = False
) -> np.ndarray:
    """Append T new tokens to the cache and return their next-token logits, shape (T, vocab)."""
    return forward_hidden(model, tokens, cache, last_only=last_only).logits


def forward_each(model: Model, tokens: np.ndarray | list[int], caches: list[KVCache]) -> np.ndarray:
    """One new token for each of B sequences in one pass: (B, vocab) logits, row b sequence b's.

    Batched decoding: the weights are read once for all B rows, each row attends over its own
    cache. With the kernels (batch invariant) row b is bit for bit what `forward(model,
    [tokens[b]], caches[b])` gives; the reference path's BLAS promises no such thing.
    """
    return forward_hidden(model, tokens, caches).logits


# ------------------------------------------------------------------ from a checkpoint's tensors


def params_from_state_dict(
    config: GemmaConfig, tensors: dict[str, np.ndarray], weights: str = "float32"
) -> Params:
    """Arrange Hugging Face-named tensors into Params, every matrix packed for the kernels.

    weights="float32" packs each matrix as it is; "int8" quantizes it (one scale per row).
    """
    if weights not in ("float32", "int8"):
        raise InputError(f"weights must be 'float32' or 'int8', not {weights!r}")

    def get(name: str) -> Weight:
        # A copy in ordinary memory (packing makes one), not a view of the memory-mapped
        # checkpoint: every decoding step reads all weights, and mapped file pages can be dropped
        # and faulted back in mid-decode, making decoding slower and uneven.
        w = np.asarray(tensors[name], dtype=np.float32)
        if w.ndim == 1:
            return w.copy()
        return quantize_int8(w) if weights == "int8" else pack(w)

    # Layer's fields are the checkpoint's names without their module: self_attn.q_proj -> q_proj
    layers = [
        Layer(**{name.split(".")[-1]: get(layer_tensor(i, name)) for name in layer_shapes(config)})
        for i in range(config.num_hidden_layers)
    ]
    return Params(
        embed=get("model.embed_tokens.weight"), layers=layers, final_norm=get("model.norm.weight")
    )


def reference(model: Model) -> Model:
    """The same model on the plain NumPy path: float32 matrices, BLAS products, `attend`.

    What a learner reads beside the paper, and what the kernels are tested against. The copy
    holds as much memory again as the model (an int8 model's copy holds its dequantized weights).
    """
    params = map_matrices(model.params, kernels.unpack)
    return dataclasses.replace(model, params=params, fast=False)


def map_matrices(params: Params, fn: Callable[[Weight], Weight]) -> Params:
    """New Params with fn applied to every weight matrix; the norm vectors are copied."""

    def one(w: Weight) -> Weight:
        return w.copy() if isinstance(w, np.ndarray) and w.ndim == 1 else fn(w)

    layers = [Layer(**{f: one(getattr(L, f)) for f in vars(L)}) for L in params.layers]
    return Params(embed=fn(params.embed), layers=layers, final_norm=params.final_norm.copy())
