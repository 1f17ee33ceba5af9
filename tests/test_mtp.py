"""The MTP drafter: gradients against finite differences, the engine's exactness, save/load.

Gradient checks run in float64 on tiny sizes: central differences (f(w + eps) - f(w - eps)) / 2eps
against the hand-written backward, on a few entries of every weight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minispec.drafters.base import DraftContext
from minispec.drafters.mtp import (
    TRAINED,
    MTPDrafter,
    MTPParams,
    config_for,
    init_params,
    load_drafter,
    load_mtp,
    mtp_step,
    save_mtp,
    visible,
)
from minispec.generate import generate
from minispec.kernels import take_rows
from minispec.kv_cache import new_cache
from minispec.model import forward_hidden, key_mask, rms_norm
from minispec.sampling import SamplingParams
from minispec.speculative import speculative_generate
from minispec.tiny import tiny_model
from minispec.train import layers as L
from minispec.train.mtp import (
    frozen_parts,
    hidden_stats,
    step_forward,
    train,
    unrolled_loss,
)
from minispec.train.mtp_data import (
    GREEDY_STRIDE,
    GREEDY_WINDOW,
    OWN_PROMPTS,
    Batch,
    TrainData,
    chunk_documents,
    greedy_documents,
    held_out,
    own_documents,
    teacher_forced,
)
from minispec.train.recipe import Recipe

GREEDY = SamplingParams()
RNG = np.random.default_rng(0)


def numeric_grad(f, x: np.ndarray, idx: list[tuple], eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to x at the given indices."""
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        out.append((up - down) / (2 * eps))
    return np.array(out)


def some_indices(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(s)) for s in shape) for _ in range(n)]


def check(f, x, analytic, n=6, rtol=1e-5, atol=1e-8):
    idx = some_indices(x.shape, n)
    np.testing.assert_allclose(
        [analytic[i] for i in idx], numeric_grad(f, x, idx), rtol=rtol, atol=atol
    )


def randn(*shape):
    return RNG.standard_normal(shape)


# ----------------------------------------------------------------------- each layer's gradient


def test_rms_norm_gradient():
    x, w, up = randn(3, 5, 8), 0.3 * randn(8), randn(3, 5, 8)  # loss = sum(y * up)
    y, cache = L.rms_norm_forward(x, w, 1e-6)
    np.testing.assert_allclose(y, rms_norm(x, w, 1e-6))
    dx, dw = L.rms_norm_backward(up, cache)

    def f():
        return float(np.sum(L.rms_norm_forward(x, w, 1e-6)[0] * up))

    check(f, x, dx)
    check(f, w, dw)


def test_linear_gradient():
    x, w, up = randn(2, 4, 6), randn(3, 6), randn(2, 4, 3)
    dx, dw = L.linear_backward(up, L.linear_forward(x, w)[1])

    def f():
        return float(np.sum(L.linear_forward(x, w)[0] * up))

    check(f, x, dx)
    check(f, w, dw)


def test_gelu_and_gated_mlp_gradient():
    m, up = randn(2, 3, 6), randn(2, 3, 6)
    gate, upw, down = randn(10, 6), randn(10, 6), randn(6, 10)
    y, cache = L.mlp_forward(m, gate, upw, down)
    dm, (dg, du, dd) = L.mlp_backward(up, cache)

    def f():
        return float(np.sum(L.mlp_forward(m, gate, upw, down)[0] * up))

    for x, g in [(m, dm), (gate, dg), (upw, du), (down, dd)]:
        check(f, x, g)


def test_rope_gradient_is_the_inverse_rotation():
    x, up, pos = randn(5, 2, 8), randn(5, 2, 8), np.arange(3, 8)
    dx = L.rope_backward(up, pos, 10_000.0)

    def f():
        return float(np.sum(L.rope_forward(x, pos, 10_000.0) * up))

    check(f, x, dx)
    # RoPE is a rotation: backward(forward(x)) = x
    np.testing.assert_allclose(L.rope_backward(L.rope_forward(x, pos, 1e4), pos, 1e4), x)


def test_query_only_attention_gradient():
    B, T, S, H, G, hd = 2, 4, 6, 4, 2, 5
    q, keys, values, up = (
        randn(B, T, H, hd),
        randn(B, S, G, hd),
        randn(B, S, G, hd),
        randn(B, T, H, hd),
    )
    seen = np.arange(S)[None, :] <= np.arange(T)[:, None] + 1  # (T, S)
    out, cache = L.attention_forward(q, keys, values, seen)
    dq = L.attention_backward(up, cache)

    def f():
        return float(np.sum(L.attention_forward(q, keys, values, seen)[0] * up))

    check(f, q, dq, n=10)
    # masked keys do not matter: changing one changes nothing
    keys2 = keys.copy()
    keys2[:, S - 1] += 5.0
    np.testing.assert_allclose(L.attention_forward(q, keys2, values, seen)[0][:, :2], out[:, :2])


@pytest.mark.parametrize("window", [None, 3])
def test_training_attention_is_the_models(window):
    """The batched, masked attention of training computes `model.attend_rows` over the bounds."""
    from minispec.model import attend_rows

    T, S, H, G, hd = 4, 9, 4, 2, 5
    q, keys, values = randn(2, T, H, hd), randn(2, S, G, hd), randn(2, S, G, hd)
    # query t: draft step 2 from position t + 1, at position t + 3, reading keys 0..t + 1
    bounds = visible(np.arange(T) + 3, np.arange(T) + 2, window)
    out, _ = L.attention_forward(q, keys, values, key_mask(bounds, S))
    for b in range(2):
        want = attend_rows(q[b], keys[b], values[b], bounds)
        np.testing.assert_allclose(out[b], want, rtol=1e-12, atol=1e-12)


def test_cross_entropy_gradient_ignores_unscored_labels():
    logits, labels = randn(6, 7), np.array([0, 3, -1, 6, 2, -1])
    loss, cache = L.cross_entropy_forward(logits, labels)
    d = L.cross_entropy_backward(cache)
    assert np.all(d[labels < 0] == 0)

    def f():
        return L.cross_entropy_forward(logits, labels)[0]

    check(f, logits, d, n=10)
    assert loss == pytest.approx(
        -np.mean(
            [logits[i, y] - np.log(np.exp(logits[i]).sum()) for i, y in enumerate(labels) if y >= 0]
        )
    )


# ------------------------------------------------------------------- the whole drafter, tiny


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0)


def tiny_setup(target, dtype=np.float64, S=10, B=2, head_size=60, seed=0):
    cfg = config_for(target, width=24, d_ff=32, head_size=head_size)
    rng = np.random.default_rng(seed)
    chunks = [np.concatenate([[2], rng.integers(4, 260, S - 1)]) for _ in range(B)]
    arrays = teacher_forced(target, chunks, cfg.kv_layer, say=lambda m: None)
    head_ids = np.unique(np.concatenate([arrays["labels"].ravel(), np.arange(head_size)]))[
        :head_size
    ]
    scale, mean = hidden_stats(arrays["hidden"])
    p = init_params(cfg, target, head_ids, scale, mean, seed)
    p = MTPParams(
        **{k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in vars(p).items()}
    )
    for name in TRAINED:  # non-trivial norm gains, so their gradients are checked too
        w = getattr(p, name)
        if w.ndim == 1:
            w += 0.1 * rng.standard_normal(w.shape)
    batch = Batch(**{k: arrays[k] for k in ("tokens", "hidden", "keys", "values", "labels")})
    return cfg, p, frozen_parts(target, p.head_ids, dtype), batch


def test_batched_step_equals_the_drafters_step(target):
    """The training forward is the drafter's forward: same numbers for every row."""
    cfg, p, frozen, batch = tiny_setup(target)
    B, S = batch.tokens.shape
    t, j = 5, 1
    rows = take_rows(frozen.embed, batch.tokens[:, t + j]).reshape(B, 1, -1)
    e = np.sqrt(cfg.d_model) * rows.astype(np.float64)
    h = batch.hidden[:, [t]].astype(np.float64)
    pos = np.array([t + j])
    seen = key_mask(visible(pos, t + 1, cfg.window), S)
    got, _ = step_forward(p, cfg, e, h, batch.keys, batch.values, pos, seen)
    for b in range(B):
        want = mtp_step(
            p,
            cfg,
            e[b],
            h[b],
            batch.keys[b, : t + 1],
            batch.values[b, : t + 1],
            pos,
            visible(pos, t + 1, cfg.window),
        )
        # (model.gelu_tanh rounds sqrt(2/pi) to float32: agreement to ~1e-8, not bits)
        np.testing.assert_allclose(got[b], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_steps", [1, 3])
def test_whole_drafter_gradient_unrolled(target, n_steps):
    cfg, p, frozen, batch = tiny_setup(target)
    loss, grads, _ = unrolled_loss(p, cfg, frozen, batch, n_steps)
    assert math.isfinite(loss) and set(grads) == set(TRAINED)

    def f():
        return unrolled_loss(p, cfg, frozen, batch, n_steps, grads=False)[0]

    for name in TRAINED:
        check(f, getattr(p, name), grads[name], n=4, rtol=1e-4, atol=1e-7)


def test_training_lowers_the_loss_and_raises_agreement(target):
    """150 Adam steps on a tiny model's own teacher-forced data: the training loss halves."""
    cfg, p, frozen, batch = tiny_setup(target, dtype=np.float32, S=24, B=6)
    data = TrainData(
        **vars(batch), held_out=np.array([False] * 5 + [True]), source=np.array(["x"] * 6)
    )
    before = unrolled_loss(p, cfg, frozen, data.batch(np.arange(5)), 2, grads=False)[0]
    curve = train(
        p,
        cfg,
        frozen,
        data,
        Recipe(adam_steps=150, batch=5, draft_steps=2, lr=3e-3, eval_every=150),
        say=lambda m: None,
    )
    after = unrolled_loss(p, cfg, frozen, data.batch(np.arange(5)), 2, grads=False)[0]
    assert after < 0.5 * before
    assert len(curve) == 2 and "held_out" in curve[-1]


# ----------------------------------------------------------------------- the drafter at work


@pytest.fixture(scope="module")
def drafter(target):
    cfg, p, frozen, batch = tiny_setup(target, dtype=np.float32, head_size=120)
    return MTPDrafter(target, p, cfg)


def context_for(model, tokens):
    cache = new_cache(model.config)
    out = forward_hidden(model, tokens[:-1], cache)
    return DraftContext(list(tokens), model, cache, out.hidden[-1])


def test_propose_reads_the_cache_and_writes_nothing(target, drafter):
    tokens = target.tokenizer.encode("the drafter reads the target's keys").ids
    ctx = context_for(target, tokens)
    n = ctx.target_cache.length
    before = ctx.target_cache.keys.copy(), ctx.target_cache.values.copy()
    a = drafter.propose(ctx, 3, GREEDY, None)
    assert ctx.target_cache.length == n
    np.testing.assert_array_equal(ctx.target_cache.keys, before[0])
    np.testing.assert_array_equal(ctx.target_cache.values, before[1])
    assert len(a.tokens) == 3 and set(a.tokens) <= set(drafter.params.head_ids.tolist())
    ctx.target_cache.values[drafter.cfg.kv_layer, : n - 1] += 3.0  # change the shared cache ...
    b = drafter.propose(ctx, 3, GREEDY, None)
    assert not np.allclose(
        a.logits[:, drafter.params.head_ids], b.logits[:, drafter.params.head_ids]
    )


def test_sampled_q_is_what_it_sampled_from_and_zero_outside_the_head(target, drafter):
    tokens = target.tokenizer.encode("sampling from the cheap head").ids
    ctx = context_for(target, tokens)
    sampling = SamplingParams(temperature=0.8, top_p=0.9)
    draft = drafter.propose(ctx, 3, sampling, np.random.default_rng(0))
    assert draft.q.shape == (3, target.config.vocab_size)
    np.testing.assert_allclose(draft.q.sum(axis=1), 1.0)
    outside = np.setdiff1d(np.arange(target.config.vocab_size), drafter.params.head_ids)
    assert np.all(draft.q[:, outside] == 0)
    for i, x in enumerate(draft.tokens):
        assert draft.q[i, x] > 0


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_greedy_speculative_with_mtp_equals_plain_greedy(target, drafter, k):
    for text in ["the cat sat on the mat; the cat", "def f(x):\n    return x + 1\n"]:
        ids = target.tokenizer.encode(text).ids
        plain = generate(target, ids, 20, stop_at_eos=False).ids
        got = speculative_generate(target, ids, drafter, k=k, max_new_tokens=20, stop_at_eos=False)
        assert got.ids == plain


def test_sampled_loop_with_mtp_has_the_targets_joint_distribution(monkeypatch):
    """The loop's chi-square test (tests/test_speculative.py), with an MTP drafter drafting."""
    from test_acceptance_rule import chi_square_p_value
    from test_speculative import TokenTables

    import minispec.speculative as speculative_module

    target = tiny_model(3, vocab_size=8, num_hidden_layers=2)
    cfg = config_for(target, width=16, d_ff=16, head_size=6)  # two tokens it can never draft
    p = init_params(cfg, target, np.arange(6), np.ones(cfg.d_model), seed=1)
    drafter = MTPDrafter(target, p, cfg)
    tables = TokenTables()
    monkeypatch.setattr(speculative_module, "forward_hidden", tables)
    prompt, sampling = [2, 5], SamplingParams(0.7, top_p=0.85)
    n, counts = 2_000, {}  # ~13 ms a run: the drafter runs its NumPy step per draft
    for seed in range(n):
        g = speculative_generate(
            target,
            prompt,
            drafter,
            k=3,
            max_new_tokens=4,
            sampling=sampling,
            seed=seed,
            stop_at_eos=False,
            trace=False,
        )
        counts[tuple(g.ids[:3])] = counts.get(tuple(g.ids[:3]), 0) + 1
    from minispec.sampling import distribution

    def pr(context):
        return distribution(tables.row(target, tuple(prompt + context))[0], sampling)

    joint = {}
    p1 = pr([])
    for a in np.flatnonzero(p1):
        p2 = pr([a])
        for b in np.flatnonzero(p2):
            p3 = pr([a, b])
            for c in np.flatnonzero(p3):
                joint[(int(a), int(b), int(c))] = p1[a] * p2[b] * p3[c]
    assert chi_square_p_value(counts, joint, n) > 1e-4


# ------------------------------------------------------------------------------ save and load


def test_save_load_round_trip(target, drafter, tmp_path):
    path = tmp_path / "mtp.safetensors"
    save_mtp(path, drafter.params, drafter.cfg, target, info={"seed": 0})
    loaded = load_drafter(target, path)
    for name in vars(drafter.params):
        np.testing.assert_array_equal(getattr(loaded.params, name), getattr(drafter.params, name))
    assert loaded.cfg == drafter.cfg
    _, _, meta = load_mtp(path)
    assert "seed" in meta["info"]


def test_missing_or_corrupt_weights_say_how_to_retrain(target, drafter, tmp_path):
    with pytest.raises(FileNotFoundError, match="minispec train-mtp"):
        load_drafter(target, tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="minispec train-mtp"):
        load_drafter(target, bad)
    good = tmp_path / "good.safetensors"
    save_mtp(good, drafter.params, drafter.cfg, target)
    good.write_bytes(good.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="minispec train-mtp"):
        load_drafter(target, good)
    save_mtp(good, drafter.params, drafter.cfg, target)
    with pytest.raises(ValueError, match="another model"):
        load_drafter(tiny_model(seed=5), good)  # same sizes, other weights


# ------------------------------------------------------------------------------ the real model


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 4])
def test_real_greedy_with_mtp_equals_plain_greedy(real_checkpoint, k):
    """On Gemma 3 270M, with the shipped drafter (or, before it exists, an untrained one)."""
    from minispec.drafters.mtp import DEFAULT_WEIGHTS
    from minispec.loading import load_model
    from minispec.tokenizer import encode

    model = load_model(real_checkpoint)
    if DEFAULT_WEIGHTS.is_file():
        d = load_drafter(model)
    else:
        cfg = config_for(model, width=64, d_ff=64, head_size=4096)
        d = MTPDrafter(model, init_params(cfg, model, np.arange(4096), np.ones(640)), cfg)
    for text in [
        "The history of the printing press begins in the fifteenth century, when",
        "def fibonacci(n):\n    if n < 2:\n        return n\n",
    ]:
        ids = encode(model.tokenizer, text)
        plain = generate(model, ids, 16, stop_at_eos=False).ids
        got = speculative_generate(
            model, ids, d, k=k, max_new_tokens=16, stop_at_eos=False, trace=False
        )
        assert got.ids == plain


# ------------------------------------------------------------------------- make_drafter, CLI


def test_make_drafter_mtp(target, drafter, tmp_path):
    from minispec.drafters import check_drafter_spec, make_drafter

    check_drafter_spec("mtp")
    check_drafter_spec("mtp:some/weights.safetensors")
    path = tmp_path / "tiny-mtp.safetensors"
    save_mtp(path, drafter.params, drafter.cfg, target)
    d = make_drafter(f"mtp:{path}", target)
    assert isinstance(d, MTPDrafter) and d.cfg == drafter.cfg
    with pytest.raises(FileNotFoundError, match="train-mtp --out"):
        make_drafter(f"mtp:{tmp_path / 'missing.safetensors'}", target)


def test_cli_train_mtp_refuses_bad_settings_before_loading(capsys):
    from minispec.cli import main

    assert main(["train-mtp", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_cli_train_mtp_defaults_are_the_recipe():
    from minispec.cli import build_parser, recipe_from_args

    assert recipe_from_args(build_parser().parse_args(["train-mtp"])) == Recipe()


def test_shipped_weights_record_the_recipe_and_no_command_line():
    """The shipped drafter was made by `Recipe()`: its metadata says so, and no machine's paths."""
    import json
    from dataclasses import asdict

    from minispec.drafters.mtp import DEFAULT_WEIGHTS

    params, cfg, metadata = load_mtp(DEFAULT_WEIGHTS)
    info = json.loads(metadata["info"])
    recipe = Recipe()
    assert info["settings"] == asdict(recipe)
    assert (cfg.width, cfg.d_ff, cfg.head_size) == (recipe.width, recipe.d_ff, recipe.head_size)
    assert "command" not in info and "out" not in info


def test_compare_drafters_and_the_curve_plot(target, drafter, tmp_path):
    from minispec.measure import compare_drafters, curve_png

    path = tmp_path / "tiny-mtp.safetensors"
    save_mtp(path, drafter.params, drafter.cfg, target)
    rows = compare_drafters(
        target,
        ["ngram", f"mtp:{path}"],
        k=3,
        new_tokens=12,
        prompts={"text": "the cat sat on the mat; the cat"},
    )
    assert [r["drafter"] for r in rows] == ["ngram", f"mtp:{path}"]
    assert all(r["same_as_plain"] and r["tau"] >= 1.0 and r["c"] > 0 for r in rows)
    assert len(rows[1]["acceptance_by_position"]) == 3
    report = {
        "curve": [
            {"step": 0, "held_out": {"top1": [0.0, 0.0]}},
            {"step": 10, "held_out": {"top1": [0.3, 0.1]}},
        ]
    }
    curve_png(report, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------- ngram+mtp: the fallback


class Scripted:
    """A drafter that proposes a given list (maybe empty) and records what the loop told it."""

    vocab_size = None

    def __init__(self, name, tokens):
        self.name, self.tokens, self.rolled_back = name, tokens, []

    def reset(self, target):
        self.rolled_back.clear()

    def propose(self, ctx, k, sampling, rng):
        from minispec.drafters.base import Draft

        return Draft(self.tokens[:k])

    def rollback(self, n_tokens):
        self.rolled_back.append(n_tokens)


def test_fallback_drafts_with_the_first_that_has_a_draft(target):
    from minispec.drafters import FallbackDrafter

    ctx = context_for(target, [2, 7, 8, 9])
    empty, full = Scripted("empty", []), Scripted("full", [5, 6, 7])
    d = FallbackDrafter([empty, full])
    assert d.propose(ctx, 2, GREEDY, None).tokens == [5, 6] and d.last_used == "full"
    d = FallbackDrafter([full, empty])
    assert d.propose(ctx, 3, GREEDY, None).tokens == [5, 6, 7] and d.last_used == "full"
    d = FallbackDrafter([empty, Scripted("also empty", [])])
    assert d.propose(ctx, 3, GREEDY, None).tokens == [] and d.last_used == ""
    d.rollback(4)  # every drafter hears of every rollback, also the one that did not draft
    assert empty.rolled_back == [4] and d.name == "empty+also empty"
    with pytest.raises(ValueError, match="at least two"):
        FallbackDrafter([full])


def test_ngram_plus_mtp_uses_lookup_on_a_match_and_mtp_otherwise(target, drafter):
    from minispec.drafters import FallbackDrafter, NgramDrafter

    d = FallbackDrafter([NgramDrafter(), drafter])
    repeats = context_for(target, [2, 40, 41, 42, 43, 40, 41])  # "40 41" was seen: copy 42 43
    assert d.propose(repeats, 2, GREEDY, None).tokens == [42, 43]
    assert d.last_used.startswith("ngram")
    fresh = context_for(target, [2, 40, 41, 42, 43])  # no suffix n-gram occurred before
    assert len(d.propose(fresh, 3, GREEDY, None).tokens) == 3 and d.last_used == drafter.name


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculative_with_ngram_plus_mtp_equals_plain_greedy(target, drafter, k):
    from minispec.drafters import FallbackDrafter, NgramDrafter

    d = FallbackDrafter([NgramDrafter(), drafter])
    for text in ["the cat sat on the mat; the cat", "def f(x):\n    return x + 1\n"]:
        ids = target.tokenizer.encode(text).ids
        plain = generate(target, ids, 24, stop_at_eos=False).ids
        got = speculative_generate(target, ids, d, k=k, max_new_tokens=24, stop_at_eos=False)
        assert got.ids == plain


def test_make_drafter_ngram_plus_mtp(target, drafter, tmp_path):
    from minispec.drafters import FallbackDrafter, NgramDrafter, check_drafter_spec, make_drafter

    path = tmp_path / "tiny-mtp.safetensors"
    save_mtp(path, drafter.params, drafter.cfg, target)
    d = make_drafter(f"ngram+mtp:{path}", target)
    assert isinstance(d, FallbackDrafter) and isinstance(d.drafters[0], NgramDrafter)
    assert isinstance(d.drafters[1], MTPDrafter) and d.vocab_size == target.config.vocab_size
    for bad in ["ngram+", "+mtp", "none+mtp", "ngram+nothing"]:
        with pytest.raises(ValueError, match="unknown drafter"):
            check_drafter_spec(bad)


def test_restricted_labels_are_the_argmax_over_the_label_ids(target):
    """The cheaper labels of training chunks: the full argmax wherever it is a label id."""
    rng = np.random.default_rng(3)
    chunks = [np.concatenate([[2], rng.integers(4, 260, 15)]) for _ in range(3)]
    full = teacher_forced(target, chunks, 1, say=lambda m: None)
    label_ids = np.unique(np.concatenate(chunks))
    part = teacher_forced(target, chunks, 1, lambda m: None, label_ids, exact=[False, True, False])
    np.testing.assert_array_equal(part["labels"][1], full["labels"][1])  # exact: all of them
    np.testing.assert_array_equal(part["hidden"], full["hidden"])
    inside = np.isin(full["labels"], label_ids)
    assert inside[[0, 2]].mean() > 0.3  # the check below compares something
    np.testing.assert_array_equal(part["labels"][inside], full["labels"][inside])
    assert np.isin(part["labels"][[0, 2]], label_ids).all()


@pytest.mark.parametrize("n_tokens", [40, 700])
def test_own_documents_are_the_prompts_continued_one_by_one(target, n_tokens):
    """Decoded together, the own samples are what `generate` gives prompt i with seed + i.

    Prompts are kept in order until n_tokens are made; where some stop early at <eos>, more
    prompts are decoded in a second round, as one-by-one decoding would have gone on to them.
    """
    from minispec.drafters.draft_model import quantized_copy
    from minispec.generate import generate
    from minispec.tokenizer import encode

    docs = own_documents(target, n_tokens, seed=5, say=lambda m: None)
    per_prompt, made, want = max(16, n_tokens // len(OWN_PROMPTS)), 0, []
    for i, prompt in enumerate(OWN_PROMPTS):
        if made >= n_tokens:
            break
        ids = encode(target.tokenizer, prompt)
        out = generate(quantized_copy(target), ids, per_prompt, SamplingParams(1.0), 5 + i)
        want.append((f"own:{i}", prompt + out.text))
        made += len(out.ids)
    assert docs == want


def test_greedy_documents_continue_windows_of_the_samples(target):
    """Decoded together, each greedy document is a window of a sample and what greedy `generate`
    (int8 weights) continues that window with, named after its sample."""
    from minispec.drafters.draft_model import quantized_copy
    from minispec.generate import decode_text
    from minispec.tokenizer import encode

    samples = [("own:0", "The river remembers everything. " * 4), ("own:1", "Dear Tom, hi. " * 9)]
    docs = greedy_documents(target, samples, new_tokens=12, say=lambda m: None)
    want, bos, fast = [], target.config.bos_token_id, quantized_copy(target)
    for name, text in samples:
        ids = encode(target.tokenizer, text, add_bos=False)
        for start in range(0, len(ids) - GREEDY_WINDOW + 1, GREEDY_STRIDE):
            prompt = [bos, *ids[start : start + GREEDY_WINDOW]]
            out = generate(fast, prompt, 12)
            want.append((f"{name}/greedy@{start}", decode_text(target, prompt[1:]) + out.text))
    assert len(want) == 4 and docs == want  # 128 and 126 bytes: windows at 0 and 50 of each


def test_a_document_goes_where_its_parent_goes(target):
    """`parent/child` documents follow their parent's split, so no continuation of a held-out
    sample is trained on (the children's own names would hash to both splits)."""
    from minispec.tokenizer import encode

    letters = "abcdefghijkl"  # parent i's children are made of letter i only
    docs = [(f"own:{i}/greedy@{j}", c * 32) for i, c in enumerate(letters) for j in range(3)]
    parents = [held_out(f"own:{i}", 0.5) for i in range(len(letters))]
    assert any(parents) and not all(parents)  # both splits are in play
    assert [held_out(name, 0.5) for name, _ in docs] != [p for p in parents for _ in range(3)]
    chunks, split = chunk_documents(target, docs, length=17, budget=10_000, fraction=0.5)
    assert any(split) and not all(split)
    ids = {c: encode(target.tokenizer, c, add_bos=False)[0] for c in letters}
    for chunk, held in zip(chunks, split, strict=True):
        found = {c for c in letters if ids[c] in chunk}
        assert found and all(parents[letters.index(c)] == held for c in found)


def test_evaluation_prompts_are_in_no_training_text():
    """The held-out prompts the docs measure on: no sentence of theirs is in any training
    source's text, nor among the own-sample prompts."""
    from minispec.measure import EVAL_PROMPTS, MORE_PROMPTS
    from minispec.train.mtp_data import code_documents, docstring_documents, prose_documents

    corpus = "\n".join(
        text
        for docs in (prose_documents(), docstring_documents(), code_documents())
        for _, text in docs
    )
    corpus += "\n".join(OWN_PROMPTS)
    prompts = {**EVAL_PROMPTS, **MORE_PROMPTS}
    assert len(prompts) == 15
    for name, prompt in prompts.items():
        pieces = [p.strip() for p in prompt.replace(".", "\n").split("\n") if len(p.strip()) > 24]
        assert pieces, name
        for piece in pieces:
            assert piece not in corpus, (name, piece)


@pytest.mark.slow
def test_real_sampled_with_the_trained_mtp_keeps_the_targets_joint_distribution(real_checkpoint):
    """Gemma 3 270M and the shipped drafter, sampled: the first two new tokens' joint law.

    Top-k 3 at temperature 1 keeps the target's joint to 9 cells, computed exactly with 4
    forward passes. Each of 1,000 seeded runs goes through the whole loop once: the first token
    from the prompt's row, then one step that drafts one token with the MTP drafter, verifies,
    accepts it or samples the residual, and rolls back. False-failure rate 1e-4; the tiny test
    above puts 3-token drafts through the same check, and tests/test_speculative.py shows it
    catching a wrong rule.
    """
    from test_acceptance_rule import chi_square_p_value

    from minispec.loading import load_model
    from minispec.model import forward
    from minispec.sampling import distribution
    from minispec.tokenizer import encode

    model = load_model(real_checkpoint)
    drafter = load_drafter(model)
    prompt = encode(model.tokenizer, "My favourite season of the year is")
    sampling = SamplingParams(temperature=1.0, top_k=3)
    n, counts, accepted, rejected = 1_000, {}, 0, 0
    for seed in range(n):
        g = speculative_generate(
            model, prompt, drafter, k=1, max_new_tokens=3, sampling=sampling, seed=seed,
            stop_at_eos=False, trace=False,
        )  # fmt: skip
        counts[tuple(g.ids[:2])] = counts.get(tuple(g.ids[:2]), 0) + 1
        accepted += g.stats.accepted
        rejected += g.stats.verified - g.stats.accepted
    assert accepted > 100 and rejected > 100  # the drafter's tokens were really tested

    def p(context):
        logits = forward(model, prompt + context, new_cache(model.config), last_only=True)
        return distribution(logits[-1], sampling)

    joint = {}
    p1 = p([])
    for a in np.flatnonzero(p1):
        p2 = p([int(a)])
        for b in np.flatnonzero(p2):
            joint[(int(a), int(b))] = p1[a] * p2[b]
    assert len(joint) == 9
    assert chi_square_p_value(counts, joint, n) > 1e-4
