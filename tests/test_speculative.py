"""The speculative loop on tiny random models: greedy equality, rollback, sampling, bad input.

Notation: p = target, q = draft (Leviathan et al. 2023).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_acceptance_rule import chi_square_p_value  # the same test statistic

import minispec.drafters.draft_model as draft_model_module
import minispec.speculative as speculative_module
from minispec.drafters import Draft, DraftModelDrafter, make_drafter
from minispec.generate import generate
from minispec.kv_cache import new_cache
from minispec.model import ForwardOutput, forward, forward_hidden
from minispec.sampling import SamplingParams, distribution
from minispec.speculative import prefill, speculative_generate, speculative_step
from minispec.tiny import tiny_model

GREEDY = SamplingParams()
N_NEW = 20


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0)


PROMPTS = {
    "text": "the cat sat on the mat; the cat",
    "code": "def f(x):\n    return x + 1\n\ndef g(x):\n    return",
}


def encode(model, text):
    return model.tokenizer.encode(text).ids


class ScriptedDrafter:
    """Proposes the known greedy continuation, wrong (token + 1) wherever `wrong(i)` says."""

    vocab_size = None

    def __init__(self, n_prompt: int, truth: list[int], wrong, name: str) -> None:
        self.n_prompt, self.truth, self.wrong, self.name = n_prompt, truth, wrong, name

    def reset(self, target):
        pass

    def propose(self, ctx, k, sampling, rng):
        start = len(ctx.tokens) - self.n_prompt  # index in the new tokens of the next one
        out = []
        for i in range(start, min(start + k, len(self.truth))):
            out.append((self.truth[i] + 1) % 260 if self.wrong(i) else self.truth[i])
        return Draft(out)

    def rollback(self, n_tokens):
        pass


SCRIPTS = {
    "always-right": lambda i: False,
    "always-wrong": lambda i: True,
    "partly-right": lambda i: i % 8 in (0, 6),  # right in runs of 5 and of 1
}


def build_drafter(name, target, prompt_ids, truth):
    if name in SCRIPTS:
        return ScriptedDrafter(len(prompt_ids), truth, SCRIPTS[name], name)
    if name == "other-model":
        return DraftModelDrafter(tiny_model(seed=7))
    return make_drafter(name, target)


@pytest.fixture(scope="module")
def plain(target):
    """Plain greedy output per prompt: the reference every drafter must reproduce."""
    out = {}
    for name, text in PROMPTS.items():
        ids = encode(target, text)
        out[name] = ids, generate(target, ids, N_NEW, stop_at_eos=False).ids
    return out


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize(
    "drafter",
    [
        "always-right",
        "always-wrong",
        "partly-right",
        "ngram",
        "early-exit:2",
        "early-exit:4:48",
        "int8",
        "other-model",
    ],
)
def test_greedy_speculative_equals_plain_greedy(target, plain, drafter, k):
    for prompt_name in PROMPTS if drafter in SCRIPTS or drafter == "ngram" else ["code"]:
        ids, expected = plain[prompt_name]
        d = build_drafter(drafter, target, ids, expected)
        got = speculative_generate(target, ids, d, k=k, max_new_tokens=N_NEW, stop_at_eos=False)
        assert got.ids == expected, f"{drafter}, k={k}, prompt {prompt_name!r}"
        s = got.stats
        assert s.new_tokens == N_NEW == 1 + s.emitted  # the prefill gives the first token
        assert s.target_forwards == s.steps + 1
        assert 0 < s.trace_s < s.decode_s  # the trace's records are timed, inside decoding
        if drafter == "always-right":
            assert s.alpha == 1.0 and s.accepted == s.drafted
            assert s.steps == math.ceil((N_NEW - 1) / (k + 1))  # k accepted + 1 bonus per step
        if drafter == "always-wrong":
            assert s.accepted == 0 and s.tau == 1.0 and s.steps == N_NEW - 1


def test_greedy_stops_at_eos_like_plain_generate(target):
    """Tiny model 0 reaches <eos> from this prompt; speculation must stop at the same token."""
    ids = encode(target, "hello hello hello world")
    expected = generate(target, ids, 60).ids
    assert expected[-1] == target.config.eos_token_id and len(expected) < 60
    for spec in ("ngram", "int8", "early-exit:3"):
        got = speculative_generate(target, ids, make_drafter(spec, target), k=5, max_new_tokens=60)
        assert got.ids == expected and got.stopped_by == "eos"


def test_drafter_none_is_plain_decoding(target, plain):
    ids, expected = plain["text"]
    got = speculative_generate(target, ids, None, k=4, max_new_tokens=N_NEW, stop_at_eos=False)
    assert got.ids == expected
    assert got.stats.drafted == 0 and got.stats.tau == 1.0


def test_sampled_without_drafts_is_plain_sampling_draw_for_draw(target):
    """No drafts: every step samples its bonus token from p, exactly as `generate` does."""
    ids = encode(target, "sampling")
    sampling = SamplingParams(temperature=0.9, top_k=50, top_p=0.9)
    plain = generate(target, ids, 15, sampling, seed=11, stop_at_eos=False).ids
    got = speculative_generate(target, ids, None, 4, 15, sampling, seed=11, stop_at_eos=False)
    assert got.ids == plain


def test_max_new_tokens_is_never_exceeded(target, plain):
    ids, expected = plain["code"]
    right = ScriptedDrafter(len(ids), expected, SCRIPTS["always-right"], "right")
    for n in (1, 2, 3, 7):
        got = speculative_generate(target, ids, right, k=8, max_new_tokens=n, stop_at_eos=False)
        assert got.ids == expected[:n]


# --------------------------------------------------------------------------------- rollback


def assert_cache_is_built_from(model, cache, tokens):
    """The valid part of the cache equals one computed from `tokens` alone."""
    fresh = new_cache(model.config, len(tokens))
    forward(model, tokens, fresh)
    assert cache.length == len(tokens)
    np.testing.assert_allclose(cache.keys[:, : len(tokens)], fresh.keys, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(cache.values[:, : len(tokens)], fresh.values, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("drafter", ["partly-right", "int8", "early-exit:3"])
def test_rollback_leaves_the_cache_of_the_accepted_tokens(target, plain, drafter):
    ids, expected = plain["code"]
    d = build_drafter(drafter, target, ids, expected)
    d.reset(target)
    rng = np.random.default_rng(0)
    state, _ = prefill(target, ids, GREEDY, rng, capacity=8)  # small: the buffer must grow
    patterns = set()
    while len(state.new_ids) < N_NEW:
        step = speculative_step(target, state, d, 4, GREEDY, rng)
        patterns.add((len(step.draft.tokens), step.verdict.n_accepted))
        assert step.kv_after == step.kv_before + 1 + step.verdict.n_accepted
        assert_cache_is_built_from(target, state.cache, state.tokens[:-1])
        if isinstance(d, DraftModelDrafter):  # the draft's own cache: the accepted prefix
            n = d.cache.length
            assert n <= len(state.tokens)
            assert_cache_is_built_from(d.draft, d.cache, state.tokens[:n])
    assert state.new_ids[:N_NEW] == expected
    if drafter == "partly-right":
        assert {0, 4} < {a for _, a in patterns}  # rejected first, later, never


# ------------------------------------------------------------- sampled, through the whole loop


class TokenTables:
    """Stand-in for `forward_hidden`: exact rows of the real tiny model, computed once per context.

    Each cache stores its tokens in keys[0, :, 0, 0], so truncation by the loop is respected and
    the rows returned are those of the real model for the tokens the cache really holds.
    """

    def __init__(self) -> None:
        self.rows: dict = {}

    def __call__(self, model, tokens, cache, *, n_layers=None, last_only=False) -> ForwardOutput:
        tokens = list(tokens)
        start = cache.length
        cache.reserve(len(tokens))
        cache.keys[0, start : start + len(tokens), 0, 0] = tokens
        cache.length += len(tokens)
        held = tuple(int(t) for t in cache.keys[0, : cache.length, 0, 0])
        ends = [cache.length] if last_only else range(start + 1, cache.length + 1)
        rows = [self.row(model, held[:end]) for end in ends]
        return ForwardOutput(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))

    def row(self, model, context):
        key = (id(model), context)
        if key not in self.rows:
            out = forward_hidden(model, list(context), new_cache(model.config), last_only=True)
            self.rows[key] = out.logits[-1], out.hidden[-1]
        return self.rows[key]

    def forward(self, model, tokens, cache, *, last_only=False):
        return self(model, tokens, cache, last_only=last_only).logits


@pytest.fixture(scope="module")
def sampled_setup():
    target = tiny_model(3, vocab_size=8, num_hidden_layers=2)
    drafter = DraftModelDrafter(tiny_model(4, vocab_size=8, num_hidden_layers=2))
    return target, drafter, TokenTables()


def run_sampled(setup, monkeypatch, n_runs, temperature=0.7, top_p=0.85):
    """Counts of the first three new tokens over n_runs seeds, and the exact target joint."""
    target, drafter, tables = setup
    monkeypatch.setattr(speculative_module, "forward_hidden", tables)
    monkeypatch.setattr(draft_model_module, "forward", tables.forward)
    prompt, sampling = [2, 5], SamplingParams(temperature, top_p=top_p)
    counts: dict = {}
    for seed in range(n_runs):
        g = speculative_generate(
            target,
            prompt,
            drafter,
            k=3,
            max_new_tokens=4,  # the first step drafts two tokens (4 - 1 - 1)
            sampling=sampling,
            seed=seed,
            stop_at_eos=False,
            trace=False,
        )
        counts[tuple(g.ids[:3])] = counts.get(tuple(g.ids[:3]), 0) + 1

    def p(context):
        logits, _ = tables.row(target, tuple(prompt + context))
        return distribution(logits, sampling)

    joint = {}
    p1 = p([])
    for a in np.flatnonzero(p1):
        p2 = p([a])
        for b in np.flatnonzero(p2):
            p3 = p([a, b])
            for c in np.flatnonzero(p3):
                joint[(int(a), int(b), int(c))] = p1[a] * p2[b] * p3[c]
    return counts, joint


def test_sampled_loop_has_the_targets_joint_distribution(sampled_setup, monkeypatch):
    """The whole loop (drafter, verify rows, rule, rollback); false failure rate 1e-4.

    4,000 seeds here (each run costs ~1 ms: the loop's sampling functions dominate);
    test_acceptance_rule.py puts 100,000 runs through the rule, the slow test below 100,000
    through this loop.
    """
    n = 4_000
    counts, joint = run_sampled(sampled_setup, monkeypatch, n)
    assert chi_square_p_value(counts, joint, n) > 1e-4


def test_sampled_loop_test_fails_for_a_wrong_rule(sampled_setup, monkeypatch):
    """Swap in a rule that accepts every draft: the same check must fail."""
    from test_acceptance_rule import accept_every_draft

    monkeypatch.setattr(speculative_module, "accept_or_reject", accept_every_draft)
    n = 4_000
    counts, joint = run_sampled(sampled_setup, monkeypatch, n)
    assert chi_square_p_value(counts, joint, n) < 1e-4


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_clear_error(target):
    ids = encode(target, "hi")
    ngram = make_drafter("ngram", target)
    with pytest.raises(ValueError, match=r"k \(tokens drafted per step\) must be in 1..16"):
        speculative_generate(target, ids, ngram, k=0)
    with pytest.raises(ValueError, match="must be in 1..16"):
        speculative_generate(target, ids, ngram, k=17)
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(target, [], ngram, k=4)
    other_vocab = DraftModelDrafter(tiny_model(seed=1, vocab_size=300))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, ids, other_vocab, k=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(target, ids, ngram, k=4, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, ids, ngram, k=4, sampling=SamplingParams(temperature=-1))
    with pytest.raises(ValueError, match="early-exit drafter drafts only for the model"):
        speculative_generate(tiny_model(seed=5), ids, make_drafter("early-exit", target), k=4)


def test_a_drafter_that_breaks_the_protocol_is_stopped(target):
    ids = encode(target, "hi")

    class TooMany(ScriptedDrafter):
        def propose(self, ctx, k, sampling, rng):
            return Draft([5] * (k + 1))

    with pytest.raises(ValueError, match="more than k"):
        speculative_generate(target, ids, TooMany(0, [], None, "too-many"), k=3)


# ------------------------------------------------------------------------- the real Gemma 3 270M

REAL_PROMPTS = {
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n\n\ndef factorial(n):\n",
    "prose": "The history of the printing press begins in the fifteenth century, when",
}
REAL_NEW = 24


@pytest.fixture(scope="module")
def real(real_checkpoint):
    """The model, and its plain greedy continuation of each prompt."""
    from minispec.loading import load_model
    from minispec.tokenizer import encode as encode_text

    model = load_model(real_checkpoint)
    plain = {}
    for name, text in REAL_PROMPTS.items():
        ids = encode_text(model.tokenizer, text)
        plain[name] = ids, generate(model, ids, REAL_NEW, stop_at_eos=False).ids
    return model, plain


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 5, 8, 16])  # the tiny models cover every k in 1..8
def test_real_greedy_with_scripted_drafts(real, k):
    """Always right, always wrong, partly right: the output is plain greedy's, token for token."""
    model, plain = real
    for name, (ids, expected) in plain.items():
        for script, wrong in SCRIPTS.items():
            d = ScriptedDrafter(len(ids), expected, wrong, script)
            got = speculative_generate(model, ids, d, k, REAL_NEW, stop_at_eos=False, trace=False)
            assert got.stats.trace_s == 0
            assert got.ids == expected, f"{script}, k={k}, {name}"


@pytest.mark.slow
@pytest.mark.parametrize("n_nodes", [8])
def test_real_greedy_with_scripted_trees(real, n_nodes):
    """Token trees with the right path in them, or not: plain greedy's tokens, and the cache
    compaction keeps the accepted path only (the next steps read it)."""
    from test_tree_rule import SCRIPTS as TREE_SCRIPTS
    from test_tree_rule import ScriptedTreeDrafter

    model, plain = real
    for name, (ids, expected) in plain.items():
        for script, right in TREE_SCRIPTS.items():
            d = ScriptedTreeDrafter(len(ids), expected, right, name=script)
            got = speculative_generate(
                model, ids, d, 4, REAL_NEW, stop_at_eos=False, trace=False, tree=n_nodes
            )
            assert got.ids == expected, f"{script}, tree={n_nodes}, {name}"


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("spec", ["ngram", "int8", "early-exit:3", "early-exit:15:16384"])
def test_real_greedy_with_every_drafter(real, spec, k):
    model, plain = real
    drafter = make_drafter(spec, model)
    for name, (ids, expected) in plain.items():
        got = speculative_generate(model, ids, drafter, k, REAL_NEW, stop_at_eos=False, trace=False)
        assert got.ids == expected, f"{spec}, k={k}, {name}"


# ------------------------------------------------------------------------------------- the CLI


def test_cli_refuses_a_bad_drafter_or_k_before_loading(capsys):
    from minispec.cli import main

    assert main(["generate", "--prompt", "x", "--drafter", "bogus", "--json"]) == 2
    assert "unknown drafter 'bogus'" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--drafter", "ngram", "--k", "0"]) == 2
    assert "must be in 1..16" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_generate_with_a_drafter(real_checkpoint, tmp_path, capsys):
    import json

    from minispec.cli import main
    from minispec.trace import load_trace, replayed_ids

    trace_path = tmp_path / "run.json"
    args = ["generate", "--model", str(real_checkpoint), "--prompt", REAL_PROMPTS["code"]]
    args += ["--max-new-tokens", "12", "--drafter", "ngram", "--k", "4"]
    assert main([*args, "--trace", str(trace_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ids", "text", "tokens_per_s", "prompt_ids", "stopped_by", "model", "weights"):
        assert key in out
    for key in ("drafted", "accepted", "alpha", "tau", "target_forwards", "expected_tau"):
        assert key in out["stats"]
    assert replayed_ids(load_trace(trace_path)) == out["ids"]
    assert main([*args[:-4], "--json"]) == 0  # plain decoding: the same tokens
    assert json.loads(capsys.readouterr().out)["ids"] == out["ids"]
