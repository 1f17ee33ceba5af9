"""Training the MTP drafter: unrolled over its draft steps, self-distilled, with Adam.

The drafter (minispec/drafters/mtp.py) is trained as it is used. For each cached position t of
a teacher-forced document, step 1 reads the target's hidden state h_t and the next token
x_{t+1}; step j > 1 reads the drafter's own output of step j - 1 and x_{t+j} (unrolled, so
draft positions 2 and 3 learn from the states they will really see). Every step attends to
the target's cached keys and values of positions 0..t only, and is scored against the
target's own choice there (self-distillation, as Gemma 4's assistant and EAGLE learn the
target, not the text):

    loss = sum_j  CE( head(h'_j), argmax p_target(. | x_{<=t+j}) )

Labels the cheap head cannot score (outside its token subset) are left out of the loss; the
held-out agreement counts them as misses. Gradients flow back through all the steps
(backpropagation through time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from minispec.drafters.mtp import TRAINED, MTPConfig, MTPParams, visible
from minispec.errors import InputError
from minispec.kernels import take_rows
from minispec.model import Model, key_mask
from minispec.train.adam import AdamState, adam_step
from minispec.train.layers import (
    attention_backward,
    attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    rms_norm_backward,
    rms_norm_forward,
    rope_backward,
    rope_forward,
)
from minispec.train.mtp_data import Batch, TrainData
from minispec.train.recipe import SHIPPED, Recipe


@dataclass
class Frozen:
    """What the drafter borrows from the target and never trains."""

    embed: object  # the target's embedding (Weight): the input token's row, scaled by sqrt(D)
    final_norm: np.ndarray  # (D,) the target's final norm gain
    head_rows: np.ndarray  # (|S|, D) the target's tied embedding rows of the head's tokens
    head_index: np.ndarray  # (vocab,) token -> its row in the head, -1 if not scored


def frozen_parts(target: Model, head_ids: np.ndarray, dtype=np.float32) -> Frozen:
    index = np.full(target.config.vocab_size, -1, np.int64)
    index[head_ids] = np.arange(head_ids.size)
    return Frozen(
        embed=target.params.embed,
        final_norm=np.asarray(target.params.final_norm, dtype),
        head_rows=take_rows(target.params.embed, head_ids).astype(dtype),
        head_index=index,
    )


# ------------------------------------------------------------------------ one step, batched


def step_forward(p: MTPParams, cfg: MTPConfig, e, h, keys, values, positions, seen):
    """`drafters.mtp.mtp_step` for (B, T) queries at once, keeping what the backward needs.

    e, h: (B, T, D); keys, values: (B, S, G, hd); positions: (T,); seen: (T, S).
    Returns h' (B, T, D) and the caches.
    """
    B, T, D = e.shape
    H, hd, eps = cfg.n_heads, cfg.head_dim, cfg.eps
    ue, c_e = rms_norm_forward(e, p.e_norm, eps)
    uh, c_h = rms_norm_forward(h * p.h_scale, p.h_norm, eps)
    z0, c_in = linear_forward(np.concatenate([ue, uh], axis=-1), p.w_in)  # (B, T, d)
    a, c_an = rms_norm_forward(z0, p.attn_norm, eps)
    qr, c_q = linear_forward(a, p.q_proj)
    qn, c_qn = rms_norm_forward(qr.reshape(B, T, H, hd), p.q_norm, eps)
    q = rope_forward(qn, positions, cfg.rope_base) * cfg.query_scale  # (B, T, H, hd)
    o, c_att = attention_forward(q, keys, values, seen)
    ao, c_o = linear_forward(o.reshape(B, T, H * hd), p.o_proj)
    z1 = z0 + ao
    m, c_mn = rms_norm_forward(z1, p.mlp_norm, eps)
    f, c_mlp = mlp_forward(m, p.gate_proj, p.up_proj, p.down_proj)
    out, c_out = linear_forward(z1 + f, p.w_out)  # (B, T, D)
    out = out + p.b_out
    return out, (c_e, c_h, c_in, c_an, c_q, c_qn, c_att, c_o, c_mn, c_mlp, c_out)


def step_backward(dout, caches, p: MTPParams, cfg: MTPConfig, positions):
    """Gradients of one step: (dL/dh of its input state, {weight name: dL/dweight})."""
    c_e, c_h, c_in, c_an, c_q, c_qn, c_att, c_o, c_mn, c_mlp, c_out = caches
    B, T, _ = dout.shape
    H, hd, D = cfg.n_heads, cfg.head_dim, cfg.d_model
    g: dict[str, np.ndarray] = {}
    g["b_out"] = np.sum(dout.reshape(-1, D), axis=0)
    dz2, g["w_out"] = linear_backward(dout, c_out)
    dm, (g["gate_proj"], g["up_proj"], g["down_proj"]) = mlp_backward(dz2, c_mlp)
    dz1_m, g["mlp_norm"] = rms_norm_backward(dm, c_mn)
    dz1 = dz2 + dz1_m  # the residual passes the gradient straight through
    do, g["o_proj"] = linear_backward(dz1, c_o)
    dq = attention_backward(do.reshape(B, T, H, hd), c_att) * cfg.query_scale
    dqn = rope_backward(dq, positions, cfg.rope_base)
    dqr, g["q_norm"] = rms_norm_backward(dqn, c_qn)
    da, g["q_proj"] = linear_backward(dqr.reshape(B, T, H * hd), c_q)
    dz0_a, g["attn_norm"] = rms_norm_backward(da, c_an)
    du, g["w_in"] = linear_backward(dz1 + dz0_a, c_in)
    _, g["e_norm"] = rms_norm_backward(du[..., :D], c_e)  # the embedding itself is frozen
    dhs, g["h_norm"] = rms_norm_backward(du[..., D:], c_h)
    return dhs * p.h_scale, g


def head_forward(h, frozen: Frozen, eps: float):
    """The cheap head: the target's frozen final norm and embedding rows. (B, T, |S|)."""
    hn, c_fn = rms_norm_forward(h, frozen.final_norm, eps)
    logits = hn.reshape(-1, hn.shape[-1]) @ frozen.head_rows.T  # one BLAS call
    return logits.reshape(*hn.shape[:-1], -1), c_fn


def head_backward(dlogits, c_fn, frozen: Frozen):
    """dL/dh only: the head's rows are the target's and stay as they are."""
    dhn = dlogits.reshape(-1, dlogits.shape[-1]) @ frozen.head_rows
    dh, _ = rms_norm_backward(dhn.reshape(*dlogits.shape[:-1], -1), c_fn)
    return dh


# ----------------------------------------------------------------------- the unrolled loss


def unroll_inputs(batch: Batch, frozen: Frozen, cfg: MTPConfig, draft_steps: int, dtype):
    """Rows t = 0..S-1-draft_steps; step j's token, label and visible keys. Returns a dict."""
    B, S = batch.tokens.shape
    T = S - draft_steps
    t = np.arange(T)
    scale = np.asarray(np.sqrt(cfg.d_model), dtype)  # a float64 scalar would promote e
    steps = []
    for j in range(1, draft_steps + 1):
        tok = batch.tokens[:, t + j]  # (B, T): x_{t+j}, the token step j reads
        e = take_rows(frozen.embed, tok.reshape(-1)).reshape(B, T, -1).astype(dtype) * scale
        positions = t + j  # where x_{t+j} sits: the query's RoPE position
        seen = key_mask(visible(positions, t + 1, cfg.window), S)  # (T, S): cached keys 0..t
        label = batch.labels[:, t + j]  # (B, T): the target's choice after x_{t+j}
        steps.append(dict(e=e, positions=positions, seen=seen, label=label))
    return batch.hidden[:, :T].astype(dtype), steps


def unrolled_loss(
    p: MTPParams, cfg: MTPConfig, frozen: Frozen, batch: Batch, draft_steps: int, grads: bool = True
):
    """Sum over steps of the cross-entropy; with grads, also {name: gradient} by BPTT.

    Returns (loss, grads or None, per-step predictions (draft_steps, B, T) token ids).
    """
    dtype = p.w_in.dtype
    h, steps = unroll_inputs(batch, frozen, cfg, draft_steps, dtype)
    keys, values = batch.keys.astype(dtype), batch.values.astype(dtype)
    total, tape, predictions = 0.0, [], []
    for st in steps:
        h, caches = step_forward(p, cfg, st["e"], h, keys, values, st["positions"], st["seen"])
        logits, c_fn = head_forward(h, frozen, cfg.eps)  # (B, T, |S|)
        B, T, C = logits.shape
        target = frozen.head_index[st["label"]].reshape(-1)  # -1: not in the head
        loss, c_ce = cross_entropy_forward(logits.reshape(B * T, C), target)
        total += loss
        predictions.append(p.head_ids[np.argmax(logits, axis=-1)])
        tape.append((caches, c_fn, c_ce, (B, T, C), st["positions"]))
    if not grads:
        return total, None, np.stack(predictions)
    g_total = {name: np.zeros_like(getattr(p, name)) for name in TRAINED}
    dh_next = 0.0  # dL/dh' of the last step from later steps: none
    for caches, c_fn, c_ce, (B, T, C), positions in reversed(tape):
        dlogits = cross_entropy_backward(c_ce).reshape(B, T, C)
        dh = head_backward(dlogits, c_fn, frozen) + dh_next
        dh_next, g = step_backward(dh, caches, p, cfg, positions)
        for name, value in g.items():
            g_total[name] += value
    return total, g_total, np.stack(predictions)


# ------------------------------------------------------------------------------ training


def agreement(predictions: np.ndarray, labels: np.ndarray, draft_steps: int) -> dict:
    """Held-out figures: per step j the top-1 agreement with the target, and the chained rate
    (steps 1..j all right), whose sum + 1 estimates tokens per target forward (tau)."""
    T = labels.shape[1] - draft_steps
    right = np.stack(
        [predictions[j] == labels[:, np.arange(T) + j + 1] for j in range(draft_steps)]
    )
    chained = np.cumprod(right, axis=0)  # (draft_steps, B, T)
    return {
        "top1": [float(r.mean()) for r in right],
        "chained": [float(c.mean()) for c in chained],
        "tau": 1.0 + float(chained.mean(axis=(1, 2)).sum()),
    }


def evaluate(p, cfg, frozen, data: TrainData, rows: np.ndarray, draft_steps: int, batch: int = 4):
    """Loss and agreement on the given documents (no gradients)."""
    losses, preds, labels = [], [], []
    for i in range(0, rows.size, batch):
        b = data.batch(rows[i : i + batch])
        loss, _, pr = unrolled_loss(p, cfg, frozen, b, draft_steps, grads=False)
        losses.append(loss * len(b.tokens))
        preds.append(pr)
        labels.append(b.labels)
    out = agreement(np.concatenate(preds, axis=1), np.concatenate(labels), draft_steps)
    out["loss"] = float(np.sum(losses) / rows.size)
    return out


def learning_rate(step: int, s: Recipe) -> float:
    """Linear warm-up, then cosine decay to a tenth (Loshchilov & Hutter 2017)."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    frac = (step - s.warmup) / max(1, s.adam_steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * frac)))


def train(
    p: MTPParams,
    cfg: MTPConfig,
    frozen: Frozen,
    data: TrainData,
    s: Recipe,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Adam on the unrolled loss; returns the curve (one dict per evaluation)."""
    rng = np.random.default_rng(s.seed)
    train_rows = np.flatnonzero(~data.held_out)
    held_rows = np.flatnonzero(data.held_out)
    eval_rows = (
        held_rows[np.linspace(0, held_rows.size - 1, min(s.eval_docs, held_rows.size)).astype(int)]
        if held_rows.size
        else held_rows
    )
    if train_rows.size == 0:
        raise InputError("no training documents: give the data more text")
    state = AdamState(lr=s.lr)
    curve, t0, seen_positions = [], time.perf_counter(), 0
    per_doc = data.tokens.shape[1] - s.draft_steps
    for step in range(s.adam_steps + 1):
        if step % s.eval_every == 0 or step == s.adam_steps:
            point = {
                "step": step,
                "positions_seen": seen_positions,
                "seconds": time.perf_counter() - t0,
            }
            if eval_rows.size:
                point["held_out"] = evaluate(p, cfg, frozen, data, eval_rows, s.draft_steps)
                h = point["held_out"]
                say(
                    f"step {step:5d}  held-out loss {h['loss']:.3f}  top-1 agreement "
                    + " ".join(f"{a:.3f}" for a in h["top1"])
                    + f"  tau~{h['tau']:.2f}  ({point['seconds']:.0f} s)"
                )
            curve.append(point)
        if step == s.adam_steps:
            break
        rows = rng.choice(train_rows, size=min(s.batch, train_rows.size), replace=False)
        loss, grads, _ = unrolled_loss(p, cfg, frozen, data.batch(rows), s.draft_steps)
        norm = adam_step(p, grads, state, lr=learning_rate(step, s))
        seen_positions += rows.size * per_doc
        if step % 10 == 0:
            say(
                f"step {step:5d}  train loss {loss:.3f}  |grad| {norm:.2f}  "
                f"lr {learning_rate(step, s):.2e}"
            )
    return curve


# ------------------------------------------------------------------------- the whole recipe


def choose_head(labels: np.ndarray, head_size: int) -> np.ndarray:
    """The cheap head's tokens: the head_size labels the target chose most often (sorted ids)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, -counts))  # most frequent first, ties by id
    return np.sort(ids[order[:head_size]])


def hidden_stats(hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, mean): s = 1 / RMS of each hidden dimension over the training positions, and the
    mean hidden state; (D,) float32 each."""
    h = hidden.reshape(-1, hidden.shape[-1]).astype(np.float64)
    s = 1.0 / np.sqrt(np.mean(h * h, axis=0) + 1e-6)
    return s.astype(np.float32), h.mean(axis=0).astype(np.float32)


def by_source(p, cfg, frozen, data: TrainData, draft_steps: int) -> dict:
    """Held-out figures for each source of text, over every held-out document."""
    out = {}
    for name in np.unique(data.source[data.held_out]):
        rows = np.flatnonzero(data.held_out & (data.source == name))
        out[str(name)] = evaluate(p, cfg, frozen, data, rows, draft_steps)
    return out


def train_mtp(
    target: Model,
    data: TrainData,
    recipe: Recipe = SHIPPED,
    say: Callable[[str], None] = print,
) -> tuple[MTPParams, MTPConfig, dict]:
    """Pick the head, initialise, train, measure on held-out text: (params, config, report).

    The recipe's sizes and training settings are used (its data settings made `data`); the
    report's "settings" is the whole recipe.
    """
    from minispec.drafters.mtp import config_for, init_params

    s = recipe
    cfg = config_for(target, width=s.width, d_ff=s.d_ff, head_size=s.head_size)
    train_rows = ~data.held_out
    head_ids = choose_head(data.labels[train_rows], cfg.head_size)
    held = data.labels[data.held_out]
    coverage = float(np.isin(held, head_ids).mean()) if held.size else float("nan")
    say(f"head: {head_ids.size} tokens, covering {coverage:.1%} of the held-out labels")
    # position 0 (<bos>) left out: its state is an outlier the drafter rarely starts from
    scale, mean = hidden_stats(data.hidden[train_rows, 1:])
    p = init_params(cfg, target, head_ids, scale, mean, s.seed)
    frozen = frozen_parts(target, head_ids)
    t0 = time.perf_counter()
    curve = train(p, cfg, frozen, data, s, say)
    report = {
        "settings": asdict(s),
        "train_seconds": time.perf_counter() - t0,
        "train_positions": int(train_rows.sum()) * data.tokens.shape[1],
        "held_out_positions": int(data.held_out.sum()) * data.tokens.shape[1],
        "head_coverage": coverage,
        "curve": curve,
        "held_out_by_source": by_source(p, cfg, frozen, data, s.draft_steps) if held.size else {},
    }
    return p, cfg, report
