"""Each drafter on its own: what it proposes, what q it reports, what state it leaves behind."""

from __future__ import annotations

import numpy as np
import pytest

from minispec.drafters import (
    DraftContext,
    Drafter,
    DraftModelDrafter,
    EarlyExitDrafter,
    NgramDrafter,
    make_drafter,
    quantized_copy,
)
from minispec.drafters.base import choose
from minispec.drafters.ngram import lookup
from minispec.kernels import PackedWeight
from minispec.kv_cache import new_cache
from minispec.model import forward, forward_hidden
from minispec.sampling import SamplingParams, distribution
from minispec.speculative import prefill
from minispec.tiny import tiny_model

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9)


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0)


def context_for(model, tokens):
    """A DraftContext as the loop builds it: the cache holds all but the newest token."""
    state, _ = prefill(model, tokens[:-1], GREEDY, np.random.default_rng(0), capacity=64)
    state.tokens[-1] = tokens[-1]  # the newest token, whatever the prefill would have chosen
    return DraftContext(state.tokens, model, state.cache, state.hidden)


# ------------------------------------------------------------------------------ prompt lookup


@pytest.mark.parametrize(
    ("tokens", "k", "expected"),
    [
        ([1, 2, 3, 9, 9, 1, 2, 3], 3, [9, 9, 1]),  # trigram match, copy what followed
        ([1, 2, 3, 4, 7, 2, 3, 5, 2, 3], 2, [5, 2]),  # most recent earlier match wins
        ([5, 1, 2, 8, 6, 2, 7, 1, 2], 4, [8, 6, 2, 7]),  # bigram [1, 2] beats unigram [2]
        ([4, 2, 6, 2], 3, [6, 2]),  # unigram only; the continuation ends at the context's end
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([7], 3, []),  # nothing before
        ([3, 3, 3, 3], 2, [3]),  # overlapping match
        ([1, 2, 3, 1, 2, 3], 8, [1, 2, 3]),  # never more than the context has
    ],
)
def test_lookup(tokens, k, expected):
    assert lookup(tokens, k) == expected


def test_lookup_respects_n_range():
    tokens = [1, 2, 9, 5, 2, 8, 1, 2]
    assert lookup(tokens, 2, max_n=2) == [9, 5]  # bigram [1, 2]
    assert lookup(tokens, 2, max_n=1) == [8, 1]  # unigram [2]: its latest earlier occurrence
    assert lookup(tokens, 2, max_n=3, min_n=3) == []


def test_ngram_drafter_copies_code(target):
    code = "def area(r):\n    return 3.14 * r * r\n\ndef area(r):\n    return 3.14"
    ids = target.tokenizer.encode(code).ids
    draft = NgramDrafter().propose(context_for(target, ids), 6, GREEDY, None)
    assert target.tokenizer.decode(draft.tokens) == " * r *"
    assert draft.q is None  # no probabilities: the loop uses one-hot q


# -------------------------------------------------------------------------------- early exit


@pytest.mark.parametrize("sampling", [SAMPLED, SamplingParams(temperature=1.3, top_k=7)])
def test_choose_over_a_cheap_heads_subset_is_the_full_distribution(sampling):
    """A cheap head leaves unscored tokens at -inf: `choose` computes q over the scored ones
    only, and that is the full row's distribution (zero elsewhere), and it draws from it."""
    rng = np.random.default_rng(3)
    logits = np.full(5000, -np.inf, dtype=np.float32)
    scored = np.sort(rng.choice(5000, 300, replace=False))
    logits[scored] = 3 * rng.standard_normal(300, dtype=np.float32)
    full = distribution(logits, sampling)
    draws = rng.integers(0, 2**32, 400)
    picks = set()
    for seed in draws:
        token, q = choose(logits, sampling, np.random.default_rng(seed))
        np.testing.assert_allclose(q, full, rtol=1e-12, atol=1e-15)
        assert np.all(q[logits == -np.inf] == 0) and q[token] > 0
        picks.add(token)
    assert len(picks) > 1  # sampled, not one fixed token
    # A row with every token scored goes through `distribution` unchanged: the same bits.
    dense = rng.standard_normal(5000).astype(np.float32)
    assert np.array_equal(
        choose(dense, sampling, np.random.default_rng(0))[1], distribution(dense, sampling)
    )


@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_early_exit_q_is_the_truncated_model(target, n_layers):
    """q = softmax of (first L layers, final norm, head), computed here on a fresh cache."""
    tokens = target.tokenizer.encode("early exit drafts").ids
    ctx = context_for(target, tokens)
    drafter = EarlyExitDrafter(target, n_layers=n_layers)
    draft = drafter.propose(ctx, 3, GREEDY, np.random.default_rng(0))
    assert ctx.target_cache.length == len(tokens) - 1  # the shared cache's length is restored
    context = list(tokens)
    assert draft.q is None  # greedy: the rule needs no q
    for x, logits in zip(draft.tokens, draft.logits, strict=True):
        out = forward_hidden(target, context, new_cache(target.config), n_layers=n_layers)
        np.testing.assert_allclose(logits, out.logits[-1], atol=1e-5, rtol=1e-5)
        assert x == int(np.argmax(out.logits[-1]))
        context.append(x)


def test_early_exit_reuses_the_targets_cache(target):
    """The drafter reads the prompt's keys and values from the target's cache, never recomputes."""
    tokens = target.tokenizer.encode("a long prompt the drafter must not recompute").ids
    ctx = context_for(target, tokens)
    n = ctx.target_cache.length
    before = ctx.target_cache.keys[:, :n].copy(), ctx.target_cache.values[:, :n].copy()
    a = EarlyExitDrafter(target, n_layers=3).propose(ctx, 2, GREEDY, None)
    # the prompt's keys and values are read, never rewritten
    np.testing.assert_array_equal(ctx.target_cache.keys[:, :n], before[0])
    np.testing.assert_array_equal(ctx.target_cache.values[:, :n], before[1])
    ctx.target_cache.values[:, n - 1] += 10.0  # change what the cache says of the prompt ...
    b = EarlyExitDrafter(target, n_layers=3).propose(ctx, 2, GREEDY, None)
    assert not np.allclose(a.logits, b.logits)  # ... and the draft changes: it reads the cache


def test_cheap_head_scores_frequent_and_context_tokens_only(target):
    tokens = target.tokenizer.encode("zzz yyy zzz").ids  # bytes 'z' 'y' ' ' are ids >= 36
    ctx = context_for(target, tokens)
    drafter = EarlyExitDrafter(target, n_layers=3, head_size=36)
    draft = drafter.propose(ctx, 2, SAMPLED, np.random.default_rng(0))
    allowed = set(range(36)) | set(tokens)
    support = set(np.flatnonzero(draft.q.sum(axis=0)).tolist())
    assert support <= allowed and set(draft.tokens) <= allowed
    # on the candidates, the cheap head's logits are the full head's
    full = EarlyExitDrafter(target, n_layers=3)
    h = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    cheap_logits = drafter.head(h, drafter.context_rows(tokens))
    full_logits = full.head(h, full.context_rows(tokens))
    cand = sorted(allowed)
    np.testing.assert_allclose(cheap_logits[cand], full_logits[cand], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(np.delete(cheap_logits, cand)))


def test_cheap_head_works_on_int8_weights():
    model = tiny_model(seed=0, weights="int8")
    assert model.params.embed.dtype == np.int8
    ctx = context_for(model, model.tokenizer.encode("int8 head").ids)
    draft = EarlyExitDrafter(model, n_layers=2, head_size=100).propose(ctx, 2, GREEDY, None)
    assert len(draft.tokens) == 2


def test_early_exit_refuses_bad_settings(target):
    with pytest.raises(ValueError, match="n_layers"):
        EarlyExitDrafter(target, n_layers=6)
    with pytest.raises(ValueError, match="head_size"):
        EarlyExitDrafter(target, n_layers=2, head_size=0)
    assert EarlyExitDrafter(target, head_size=260).head_size is None  # the whole vocabulary


# ------------------------------------------------------------------------------- draft model


def test_int8_copy_shares_no_arrays(target):
    draft = quantized_copy(target)
    assert draft.weights == "int8" and draft.tokenizer is target.tokenizer

    def arrays(params):
        for w in [params.embed, params.final_norm] + [
            getattr(layer, f) for layer in params.layers for f in layer.__dataclass_fields__
        ]:
            yield from (w.panels, w.scale) if isinstance(w, PackedWeight) else (w,)

    ours = list(arrays(target.params))
    for a in arrays(draft.params):
        assert not any(np.shares_memory(a, b) for b in ours)


def test_draft_model_catches_up_and_rolls_back(target):
    drafter = DraftModelDrafter(tiny_model(seed=7))
    drafter.reset(target)
    tokens = target.tokenizer.encode("catch up").ids
    draft = drafter.propose(context_for(target, tokens), 4, GREEDY, None)
    assert drafter.cache.length == len(tokens) + 3  # the last draft is never fed
    drafter.rollback(len(tokens) + 1)  # one draft accepted
    assert drafter.cache.length == len(tokens) + 1
    # next step: the context grew by the accepted draft and a correction; only that is fed
    tokens = tokens + [draft.tokens[0], 42]
    again = drafter.propose(context_for(target, tokens), 2, GREEDY, None)
    logits = forward(drafter.draft, tokens, new_cache(drafter.draft.config), last_only=True)
    assert again.tokens[0] == int(np.argmax(logits))


def test_draft_model_with_another_vocabulary_is_refused(target):
    with pytest.raises(ValueError, match="vocabulary"):
        DraftModelDrafter(tiny_model(seed=1, vocab_size=300)).reset(target)


# ------------------------------------------------------------------------------ make_drafter


def test_make_drafter_specs(target):
    assert make_drafter("none", target) is None
    assert isinstance(make_drafter("ngram", target), NgramDrafter)
    ee = make_drafter("early-exit:3:100", target)
    assert (ee.n_layers, ee.head_size) == (3, 100)
    assert make_drafter("early-exit", target, layers=2).n_layers == 2
    default = make_drafter("early-exit", target)  # 5/6 of 6 layers; a 260-token vocabulary: all
    assert (default.n_layers, default.head_size) == (5, None)
    assert make_drafter("early-exit:3:0", target).head_size is None  # 0: the full head
    assert make_drafter("int8", target).draft.weights == "int8"
    for spec in ("ngram", "early-exit", "int8"):
        assert isinstance(make_drafter(spec, target), Drafter)  # the protocol
    for bad in ("bogus", "ngram:3", "model:", "early-exit:x"):
        with pytest.raises(ValueError, match="drafter"):
            make_drafter(bad, target)


# ------------------------------------------------------------------------------ the registry


@pytest.fixture
def every_spec_buildable(target, tmp_path, monkeypatch):
    """What each spec needs to build on the tiny model: a checkpoint for model:PATH, and MTP
    weights made for the tiny model (the shipped ones are Gemma 3 270M's)."""
    from safetensors.numpy import save_file

    from minispec.config import save_config
    from minispec.drafters import mtp
    from minispec.tiny import random_state_dict

    folder = tmp_path / "tiny-draft"
    folder.mkdir()
    save_config(target.config, folder / "config.json")
    save_file(random_state_dict(target.config, seed=1), str(folder / "model.safetensors"))
    cfg = mtp.config_for(target, width=16, d_ff=32, head_size=64)
    d = target.config.hidden_size
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    params = mtp.init_params(cfg, target, np.arange(cfg.head_size), ones, zeros, 0)
    weights = tmp_path / "tiny-mtp.safetensors"
    mtp.save_mtp(weights, params, cfg, target)
    monkeypatch.setattr(mtp, "DEFAULT_WEIGHTS", weights)
    monkeypatch.setenv("MINISPEC_CACHE", str(tmp_path / "cache"))
    return {"PATH": str(folder)}


def test_every_registry_entry_builds_and_is_described(target, every_spec_buildable):
    from minispec.drafters import (
        DRAFTER_SPECS,
        DRAFTERS,
        check_drafter_spec,
        drafter_summary,
        drafter_words,
        spec_from_name,
    )

    assert set(DRAFTERS) <= {spec.partition(":")[0] for spec in DRAFTER_SPECS}
    for spec in DRAFTER_SPECS:
        check_drafter_spec(spec)
        built = spec.replace("PATH", every_spec_buildable["PATH"])
        drafter = make_drafter(built, target)
        assert drafter_summary(spec) and drafter_words(spec), spec
        if spec == "none":
            assert drafter is None
            continue
        assert isinstance(drafter, Drafter) and drafter.spec == built
        # The name a drafter reports still tells its kind, for traces that record no spec.
        assert spec_from_name(drafter.name) == spec.partition(":")[0], (spec, drafter.name)


def test_the_registry_says_early_exits_defaults(target):
    """The words come from early_exit.py's defaults, for Gemma 3 270M: 15 of 18 layers, 16,384."""
    from minispec.drafters import DRAFTERS
    from minispec.drafters.early_exit import default_exit_layer

    assert default_exit_layer(18) == 15
    words = DRAFTERS["early-exit"].words
    assert "(5 in 6)" in words and "16,384 of Gemma's 262,144 tokens" in words
    assert "5/6" in DRAFTERS["early-exit"].summary


def test_the_trace_records_the_spec_and_old_traces_still_load(target):
    from minispec.speculative import speculative_generate
    from minispec.trace import Trace

    ids = list(range(10, 30)) * 2
    for spec in ("ngram", "early-exit:3", "ngram+early-exit"):
        g = speculative_generate(target, ids, make_drafter(spec, target), k=3, max_new_tokens=6)
        assert g.trace.drafter_spec == spec
    g = speculative_generate(target, ids, None, k=3, max_new_tokens=4)
    assert g.trace.drafter_spec == "none"
    by_hand = DraftModelDrafter(tiny_model(seed=1))  # not built from a spec
    g = speculative_generate(target, ids, by_hand, k=3, max_new_tokens=4)
    assert g.trace.drafter_spec is None
    old = g.trace.to_dict()
    del old["drafter_spec"]  # a trace written before the key existed
    assert Trace.from_dict(old).drafter_spec is None
