"""A multi-token-prediction (MTP) drafter that reads the target's hidden state and KV cache.

In the style of Gemma 4's "-assistant" drafters (Hugging Face `Gemma4AssistantForCausalLM`),
EAGLE (Li et al. 2024) and DeepSeek-V3's MTP module (DeepSeek-AI 2024, sec. 2.2). One draft step
j = 1, 2, ... reads the newest token x and a hidden state h:

    u   = [ norm_e(embed(x) * sqrt(D)) ; norm_h(h * s) ]            (2D,)   s: fixed per-dim scale
    z   = W_in u                                                     (d,)    down to the width d
    z   = z + W_o attend(rope(norm_q(W_q norm_a(z)), t + j), K_L, V_L)      query-only attention
    z   = z + W_down(gelu(W_gate norm_m(z)) * W_up norm_m(z))                gated MLP (GeGLU)
    h'  = W_out z + b_out                                            (D,)    back to d_model
    logits = final_norm(h') @ E[S].T                                 (|S|,)  the cheap head

At step 1, h is the target's last block output (before its final norm) at the newest cached
position t, the one that predicted x (`DraftContext.target_hidden`); at step j > 1 it is the
drafter's own h' of step j - 1 (recurrent drafting: Gemma 4's assistant feeds its post-projection
back the same way). x is the newest token, then each drafted one.

**It shares the target's KV cache.** The attention has queries only. Its keys and values are
the target's own, already cached, of one layer L (by default the last global one, whose keys
are the newest and see the whole context): K_L[0..t], V_L[0..t]. The query is rotated to the
position t + j its token x would take, with that layer's RoPE base, so q . k is exactly what
the target's layer L would score. Nothing is recomputed and nothing is written into the cache.

**The cheap head.** Gemma 3's tied head (262,144 x 640) is 63 % of the target's weights; a step
that read all of it would cost more than half a target forward. The head here is the target's
own frozen final norm and tied embedding, restricted to a subset S of the tokens the target
most often predicts (counted on the training data's labels). Why a subset and not Gemma 4's
clustered vocabulary ("centroids": score cluster centres, then the tokens of the best
clusters): a base model's argmaxes concentrate on few tokens, so a fixed subset covers most
positions (the coverage and what it costs in acceptance are in docs/drafters.md), it is one
contiguous matrix read instead of a gather of scattered rows, and it needs no clustering of
262,144 vectors nor a centroid scorer to train. A target choice outside S can never be drafted:
that is its price. In sampled mode q is the distribution over S actually sampled from, and 0
everywhere else, which the acceptance rule handles (Leviathan et al. 2023).

Why the fixed scale s on h: Gemma's hidden states carry a few huge dimensions (the notes
measured values up to ~66,000). A plain RMS normalisation of h would shrink every other
dimension to almost nothing, so s divides each dimension by its RMS over the training data
first (a constant, computed once and saved with the weights); the learned norm follows.

The weights are saved as safetensors with their configuration in the metadata; `minispec
train-mtp` makes them (minispec/train/: layers.py has the gradients, mtp.py the loop).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from minispec import kernels
from minispec.checkpoint import WeightsError
from minispec.drafters.base import Draft, DraftContext, choose, make_draft, q_rows
from minispec.drafters.tree_search import Candidates, grow_tree
from minispec.errors import InputError
from minispec.kernels import PackedWeight, take_rows
from minispec.model import Model, gelu_tanh, key_bounds, ops, rms_norm, rope
from minispec.sampling import SamplingParams
from minispec.tree import TokenTree

# The shipped drafter for Gemma 3 270M (made by `minispec train-mtp`, see docs/drafters.md).
DEFAULT_WEIGHTS = Path(__file__).with_name("mtp_gemma3_270m.safetensors")
RETRAIN = "minispec train-mtp --out {path}"


@dataclass(frozen=True)
class MTPConfig:
    """The drafter's sizes and which of the target's layers it reads."""

    d_model: int  # D, the target's width
    width: int  # d, the drafter's own width
    d_ff: int  # the MLP's hidden width
    n_heads: int  # query heads
    n_kv_heads: int  # the target layer's key/value heads (shared by n_heads / n_kv_heads each)
    head_dim: int
    kv_layer: int  # L: the target layer whose cached keys and values it attends to
    rope_base: float  # that layer's RoPE base
    window: int | None  # that layer's sliding window (None: a global layer)
    query_scale: float  # the target's query_pre_attn_scalar ** -0.5
    eps: float  # RMSNorm epsilon
    head_size: int  # |S|, tokens the cheap head scores


def default_kv_layer(target: Model) -> int:
    """The layer L a drafter reads by default: the target's last global one (its keys are the
    newest and see the whole context), or its last layer if none is global."""
    c = target.config
    globals_ = [i for i in range(c.num_hidden_layers) if not c.is_sliding(i)]
    return globals_[-1] if globals_ else c.num_hidden_layers - 1


def config_for(
    target: Model, width: int, d_ff: int, head_size: int, kv_layer: int | None = None
) -> MTPConfig:
    """A drafter configuration for this target (sizes: `train.recipe.Recipe`'s);
    kv_layer None: `default_kv_layer`."""
    c = target.config
    if kv_layer is None:
        kv_layer = default_kv_layer(target)
    if not 0 <= kv_layer < c.num_hidden_layers:
        raise InputError(f"kv_layer must be in [0, {c.num_hidden_layers}), got {kv_layer}")
    sliding = c.is_sliding(kv_layer)
    return MTPConfig(
        d_model=c.hidden_size,
        width=width,
        d_ff=d_ff,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        kv_layer=kv_layer,
        rope_base=c.rope_local_base_freq if sliding else c.rope_theta,
        window=c.sliding_window if sliding else None,
        query_scale=float(c.query_pre_attn_scalar**-0.5),
        eps=c.rms_norm_eps,
        head_size=min(head_size, c.vocab_size),
    )


@dataclass
class MTPParams:
    """The trainable weights (norm gains are Gemma-style: the gain is 1 + w), plus two constants."""

    h_scale: np.ndarray  # (D,) constant: 1 / RMS of each hidden dimension over the training data
    head_ids: np.ndarray  # (|S|,) int64 constant: the tokens the cheap head scores
    e_norm: np.ndarray  # (D,)
    h_norm: np.ndarray  # (D,)
    w_in: np.ndarray  # (d, 2D)
    attn_norm: np.ndarray  # (d,)
    q_proj: np.ndarray  # (n_heads * head_dim, d)
    q_norm: np.ndarray  # (head_dim,)
    o_proj: np.ndarray  # (d, n_heads * head_dim)
    mlp_norm: np.ndarray  # (d,)
    gate_proj: np.ndarray  # (d_ff, d)
    up_proj: np.ndarray  # (d_ff, d)
    down_proj: np.ndarray  # (d, d_ff)
    w_out: np.ndarray  # (D, d)
    b_out: np.ndarray  # (D,) starts at the mean hidden state: the head first predicts the average


CONSTANTS = ("h_scale", "head_ids")  # not trained
TRAINED = tuple(f.name for f in fields(MTPParams) if f.name not in CONSTANTS)
MATRICES = ("w_in", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "w_out")


def init_params(
    cfg: MTPConfig,
    target: Model,
    head_ids: np.ndarray,
    h_scale: np.ndarray,
    h_mean: np.ndarray | None = None,
    seed: int = 0,
) -> MTPParams:
    """A fresh drafter: random matrices (scaled by 1/sqrt(fan_in)), norm gains 1 (w = 0).

    The query norm starts from the target layer L's own, whose keys it will be scored against.
    b_out starts at h_mean, the target's mean hidden state, and W_out small: the first guesses
    are then about the target's average next token, not the huge logits of a random state.
    """
    rng = np.random.default_rng(seed)
    D, d, f, hd = cfg.d_model, cfg.width, cfg.d_ff, cfg.head_dim
    nq = cfg.n_heads * hd

    def matrix(d_out: int, d_in: int, gain: float = 1.0) -> np.ndarray:
        return (gain * rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(np.float32)

    return MTPParams(
        h_scale=np.asarray(h_scale, np.float32),
        head_ids=np.asarray(head_ids, np.int64),
        e_norm=np.zeros(D, np.float32),
        h_norm=np.zeros(D, np.float32),
        w_in=matrix(d, 2 * D),
        attn_norm=np.zeros(d, np.float32),
        q_proj=matrix(nq, d),
        q_norm=np.asarray(target.params.layers[cfg.kv_layer].q_norm, np.float32).copy(),
        o_proj=matrix(d, nq, 0.5),
        mlp_norm=np.zeros(d, np.float32),
        gate_proj=matrix(f, d),
        up_proj=matrix(f, d),
        down_proj=matrix(d, f, 0.5),
        w_out=matrix(
            D, d, 0.1 * float(np.sqrt(np.mean(np.square(h_mean)))) if h_mean is not None else 1.0
        ),
        b_out=np.zeros(D, np.float32) if h_mean is None else np.asarray(h_mean, np.float32),
    )


# ------------------------------------------------------------------------- one draft step


def packed(p: MTPParams) -> MTPParams:
    """The same drafter with its matrices packed for the kernels (float32; done once).

    Why a fast target's drafter is packed: its products are tiny, and through NumPy they wake
    OpenBLAS's thread pool, whose threads keep spinning after each call and take the two cores
    from the Numba threads of the next verification pass (measured: a pass of 49 ms took
    115-135 ms after an MTP draft). Packed, every product of decoding runs in one thread pool.
    Training and the tests keep plain arrays (float64 for gradient checks) on NumPy's path.
    Either way the norms, RoPE and GELU are NumPy's (`fast` picks the products and attention).
    """
    return replace(p, **{name: kernels.pack(getattr(p, name)) for name in MATRICES})


def step_input(p: MTPParams, cfg: MTPConfig, e: np.ndarray, h: np.ndarray) -> np.ndarray:
    """u = [norm_e(e); norm_h(h * s)], shape (T, 2D): the token and the state, each normalised."""
    return np.concatenate(
        [rms_norm(e, p.e_norm, cfg.eps), rms_norm(h * p.h_scale, p.h_norm, cfg.eps)], axis=-1
    )


def query_only_attention(
    p: MTPParams,
    cfg: MTPConfig,
    z: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    positions: np.ndarray,
    bounds: np.ndarray,
    fast: bool = False,
) -> np.ndarray:
    """W_o softmax(q K^T) V over the target's cached keys: no keys or values of its own.

    z: (T, d); keys, values: (S, n_kv, head_dim), already normalised and rotated by the target;
    positions: (T,) each query's position; bounds: (T, 2) the keys each reads (`visible`).
    fast: the packed weights and the engine's attention kernel (`model.ops`); else NumPy.
    """
    op = ops(fast)
    T, H, hd = z.shape[0], cfg.n_heads, cfg.head_dim
    q = queries(p, cfg, z, positions, fast) * cfg.query_scale
    out = op.attend(q, keys, values, bounds)  # (T, H, head_dim): grouped-query attention
    return op.linear(out.reshape(T, H * hd), p.o_proj)  # (T, d)


def queries(
    p: MTPParams, cfg: MTPConfig, z: np.ndarray, positions: np.ndarray, fast: bool = False
) -> np.ndarray:
    """q = rope(norm_q(W_q norm_a(z)), positions), before the scale: (T, n_heads, head_dim)."""
    q = ops(fast).linear(rms_norm(z, p.attn_norm, cfg.eps), p.q_proj)
    return rope(
        rms_norm(q.reshape(len(z), cfg.n_heads, cfg.head_dim), p.q_norm, cfg.eps),
        positions,
        cfg.rope_base,
    )


def gated_mlp(p: MTPParams, cfg: MTPConfig, z: np.ndarray, fast: bool = False) -> np.ndarray:
    """W_down(gelu(W_gate m) * W_up m), m = norm_m(z): GeGLU (Shazeer 2020), as Gemma's."""
    linear = ops(fast).linear
    m = rms_norm(z, p.mlp_norm, cfg.eps)
    return linear(gelu_tanh(linear(m, p.gate_proj)) * linear(m, p.up_proj), p.down_proj)


def mtp_step(
    p: MTPParams,
    cfg: MTPConfig,
    e: np.ndarray,
    h: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    positions: np.ndarray,
    bounds: np.ndarray,
    fast: bool = False,
) -> np.ndarray:
    """One draft step for T queries: h' = W_out(block(W_in u)), shape (T, D). See the module doc.

    e: (T, D) scaled embeddings of the newest tokens; h: (T, D) the states; the rest as for
    `query_only_attention`.
    """
    linear = ops(fast).linear
    z = linear(step_input(p, cfg, e, h), p.w_in)  # (T, d)
    z = z + query_only_attention(p, cfg, z, keys, values, positions, bounds, fast)
    z = z + gated_mlp(p, cfg, z, fast)
    return linear(z, p.w_out) + p.b_out  # (T, D)


def head_logits(
    h: np.ndarray,
    final_norm: np.ndarray,
    head_rows: np.ndarray | PackedWeight,
    eps: float,
    fast: bool = False,
) -> np.ndarray:
    """The cheap head: the target's final norm and its embedding rows of S, shape (T, |S|)."""
    return ops(fast).linear(rms_norm(h, final_norm, eps), head_rows)


def visible(positions: np.ndarray, cached: int | np.ndarray, window: int | None) -> np.ndarray:
    """(T, 2) bounds of the cached keys each draft query reads: start <= s < stop.

    `key_bounds` of the query's own position t + j (all keys on a global layer, on a sliding one
    those the target's own layer would still see from there), cut at the cache's end: only keys
    0..t are cached (cached = t + 1, one number or one per query).
    """
    bounds = key_bounds(positions, window)
    bounds[:, 1] = np.minimum(bounds[:, 1], cached)
    return bounds


# ------------------------------------------------------------------------------- the drafter


class MTPDrafter:
    """Draft k tokens recurrently from the target's hidden state and its layer-L keys/values."""

    def __init__(self, target: Model, params: MTPParams, cfg: MTPConfig, name: str = "mtp"):
        check_matches_target(cfg, params, target)
        self.target, self.params, self.cfg = target, params, cfg
        self.vocab_size = target.config.vocab_size
        self.name = name
        # With a fast target, the products and attention go through its kernels too (`packed`).
        self.fast = target.fast
        self.step_params = packed(params) if self.fast else params
        # The head's rows, gathered once: (|S|, D), the target's tied embedding (its kind:
        # packed float32 or int8 with a fast target, a plain array with `reference`).
        self.head_rows = kernels.select_rows(target.params.embed, params.head_ids)
        self.scored = np.sort(params.head_ids)  # the tokens its head scores, for `choose`
        self.final_norm = np.asarray(target.params.final_norm, np.float32)
        self.embed_scale = np.float32(np.sqrt(cfg.d_model))

    def reset(self, target: Model) -> None:
        if target is not self.target:
            raise ValueError("an MTP drafter drafts only for the model it was built with")

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        cfg, p, cache = self.cfg, self.step_params, ctx.target_cache
        n = cache.length  # keys 0..t = n - 1 are cached; the newest token sits at position n
        keys, values = cache.keys[cfg.kv_layer, :n], cache.values[cfg.kv_layer, :n]  # read only
        h = np.asarray(ctx.target_hidden, np.float32)[None]  # (1, D)
        last = ctx.tokens[-1]
        tokens, rows = [], []
        qs = q_rows(k, ctx.target.config.vocab_size, sampling)
        for j in range(k):
            pos = np.array([n + j])
            e = take_rows(self.target.params.embed, np.array([last])) * self.embed_scale
            bounds = visible(pos, n, cfg.window)
            h = mtp_step(p, cfg, e, h, keys, values, pos, bounds, self.fast)
            scores = head_logits(h, self.final_norm, self.head_rows, cfg.eps, self.fast)
            logits = self.full_logits(scores[0])
            last, _ = choose(logits, sampling, rng, self.scored, out=None if qs is None else qs[j])
            tokens.append(last)
            rows.append(logits)
        return make_draft(tokens, qs, rows, self.scored)

    def propose_tree(
        self, ctx: DraftContext, n_nodes: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> TokenTree:
        """A draft tree (`tree_search.grow_tree`), all of a depth's frontier in one step.

        Node i of depth d takes the step the chain takes at j = d along i's path: its own
        token, its parent's h' (the root: the target's hidden state), position n + d. Each
        query reads only the target's cached prefix, so the nodes need no mask between them:
        T frontier nodes are T independent rows of one `mtp_step`.
        """
        cfg, p, cache = self.cfg, self.step_params, ctx.target_cache
        n = cache.length
        keys, values = cache.keys[cfg.kv_layer, :n], cache.values[cfg.kv_layer, :n]  # read only
        states = {-1: np.asarray(ctx.target_hidden, np.float32)}  # node -> h' after it (D,)

        def score(c: Candidates, frontier: list[int]) -> np.ndarray:
            tokens = np.array([c.tokens[i] for i in frontier])
            e = take_rows(self.target.params.embed, tokens) * self.embed_scale  # (T, D)
            h = np.stack([states[c.parents[i]] for i in frontier])  # (T, D)
            pos = n + np.array([c.depths[i] for i in frontier])  # (T,)
            h = mtp_step(p, cfg, e, h, keys, values, pos, visible(pos, n, cfg.window), self.fast)
            states.update(zip(frontier, h, strict=True))
            scores = head_logits(h, self.final_norm, self.head_rows, cfg.eps, self.fast)
            return self.full_logits(scores)  # (T, vocab)

        return grow_tree(ctx.tokens[-1], score, n_nodes, sampling, rng, self.scored)

    def full_logits(self, scores: np.ndarray) -> np.ndarray:
        """Scores over S placed in full-width rows; tokens outside S get -inf (q = 0).

        scores: (|S|,) or (T, |S|); the rows (vocab,) or (T, vocab).
        """
        out = np.full((*scores.shape[:-1], self.vocab_size), -np.inf, dtype=np.float32)
        out[..., self.params.head_ids] = scores
        return out

    def rollback(self, n_tokens: int) -> None:
        pass  # no state of its own: the target's cache and hidden state are the loop's


# -------------------------------------------------------------------------------- the weights


def target_fingerprint(target: Model) -> str:
    """A short hash of the target's final norm: tells a drafter trained for another model."""
    return hashlib.sha256(np.asarray(target.params.final_norm, np.float32).tobytes()).hexdigest()[
        :16
    ]


def save_mtp(
    path: str | Path, params: MTPParams, cfg: MTPConfig, target: Model, info: dict | None = None
) -> None:
    """Write the weights as safetensors; the configuration and `info` go in the metadata."""
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(getattr(params, name)) for name in vars(params)}
    metadata = {
        "config": json.dumps(asdict(cfg)),
        "target_fingerprint": target_fingerprint(target),
        "target_vocab_size": str(target.config.vocab_size),
        "info": json.dumps(info or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_mtp(path: str | Path) -> tuple[MTPParams, MTPConfig, dict]:
    """Read weights written by `save_mtp`: (params, config, metadata). Never unpickles anything.

    A missing or unreadable file raises an error that says how to make it again.
    """
    from safetensors import safe_open

    path = Path(path)
    retrain = RETRAIN.format(path=path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained MTP drafter at {path}: train one with `{retrain}`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        cfg = MTPConfig(**json.loads(metadata["config"]))
        params = MTPParams(**{f.name: tensors[f.name] for f in fields(MTPParams)})
    except Exception as e:  # a truncated file, a wrong format, a missing tensor or field
        raise WeightsError(
            f"the MTP drafter's weights at {path} are unreadable ({type(e).__name__}: {e}): "
            f"train them again with `{retrain}`"
        ) from e
    return params, cfg, metadata


def check_matches_target(
    cfg: MTPConfig, params: MTPParams, target: Model, metadata: dict | None = None
) -> None:
    """Refuse weights made for another model, with what to do about it."""
    c = target.config
    problems = []
    if cfg.d_model != c.hidden_size:
        problems.append(f"d_model {cfg.d_model} != the target's {c.hidden_size}")
    if not 0 <= cfg.kv_layer < c.num_hidden_layers or cfg.head_dim != c.head_dim:
        problems.append(f"it reads layer {cfg.kv_layer} with head_dim {cfg.head_dim}")
    if cfg.n_kv_heads != c.num_key_value_heads:
        problems.append(f"{cfg.n_kv_heads} key/value heads != the target's {c.num_key_value_heads}")
    if params.head_ids.size and (
        params.head_ids.min() < 0 or params.head_ids.max() >= c.vocab_size
    ):
        problems.append("its head names tokens outside the target's vocabulary")
    if metadata and metadata.get("target_fingerprint") not in (None, target_fingerprint(target)):
        problems.append("it was trained for another model (the fingerprints differ)")
    if problems:
        raise InputError(
            "these MTP drafter weights do not fit this target: "
            + "; ".join(problems)
            + ": train a drafter for it with `minispec train-mtp`"
        )


def load_drafter(target: Model, path: str | Path | None = None) -> MTPDrafter:
    """The trained drafter at path (default: the one shipped for Gemma 3 270M), for target."""
    params, cfg, metadata = load_mtp(path or DEFAULT_WEIGHTS)
    check_matches_target(cfg, params, target, metadata)
    return MTPDrafter(target, params, cfg)
