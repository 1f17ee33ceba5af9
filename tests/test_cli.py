"""The command line: its JSON keys are a public contract, and bad input is one clear line."""

import json
import statistics

import numpy as np
import pytest

from minispec import bench
from minispec.cli import main
from minispec.tiny import tiny_model


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--prompt", "   "], "prompt is empty"),
        (["generate", "--prompt", "hi", "--temperature", "-1"], "temperature must be >= 0"),
        (["generate", "--prompt", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
        (["generate", "--prompt", "hi", "--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["generate", "--prompt", "hi", "--k", "17", "--drafter", "ngram"], "k (tokens drafted"),
        (["generate", "--prompt", "hi", "--tree", "0"], "tree (nodes drafted per step) must be"),
        (["generate", "--prompt", "hi", "--tree", "65"], "must be in 1..64"),
        (["generate", "--prompt", "hi", "--tree", "4"], "--tree N drafts token trees: name a"),
        (["generate", "--prompt", "hi", "--model", "/no/such/model"], "no such model"),
        (["predict", "--prompt", ""], "prompt is empty"),
        (["predict", "--prompt", "hi", "--top", "0"], "--top must be >= 1"),
        (["bench", "--context", "0"], "--context"),
        (["bench", "--runs", "0"], "--runs"),
        (["bench", "--trees"], "--trees compares drafters: name them with --drafter"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minispec: error: ") and message in err[0], err


def test_a_bug_keeps_its_traceback_and_is_not_called_bad_input(monkeypatch, capsys):
    """Only InputError (and a missing file) is the user's mistake; a ValueError from inside the
    package is a bug in minispec and must not be reported as "bad input", exit 2."""
    import minispec.cli as cli

    def broken(args):
        raise ValueError("an internal contract broke")

    monkeypatch.setattr(cli, "check_prompt_text", lambda text: None)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(run=broken)
    with pytest.raises(ValueError, match="internal contract"):
        main(["generate", "--prompt", "hi"])
    assert "minispec: error" not in capsys.readouterr().err


def test_generate_tree_json_on_a_tiny_model(monkeypatch, capsys):
    """--tree N runs the loop with token trees of N nodes; --json gains the key "tree"."""
    import minispec.cli as cli
    from minispec.generate import generate
    from minispec.tree import TOP, TokenTree

    model = tiny_model()

    class Siblings:  # two guesses per step, the second one the target's argmax
        name, vocab_size = "siblings", None

        def reset(self, target):
            pass

        def rollback(self, n_tokens):
            pass

        def propose_tree(self, ctx, n_nodes, sampling, rng):
            best = int(np.argmax(cli.forward(model, ctx.tokens, cli.new_cache(model.config))[-1]))
            guesses = [(best + 1) % 260, best][:n_nodes]
            return TokenTree([ctx.tokens[-1], *guesses], [-1] + [0] * len(guesses), TOP)

    monkeypatch.setattr(cli, "load", lambda args: model)
    monkeypatch.setattr(cli, "make_drafter", lambda spec, target: Siblings())
    argv = ["generate", "--prompt", "a tree", "--max-new-tokens", "9", "--tree", "2", "--json"]
    assert main([*argv, "--drafter", "ngram"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = model.tokenizer.encode("a tree").ids
    assert out["tree"] == 2 and out["drafter"] == "siblings"
    assert out["ids"] == generate(model, ids, 9).ids  # greedy: plain decoding's tokens
    assert out["stats"]["accepted"] > 0 and out["stats"]["drafted"] > out["stats"]["steps"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("generate", "predict", "bench"))


def test_bench_measures_on_a_tiny_model():
    model = tiny_model()
    r = bench.run_bench(model, context=16, repeats=1, decode_tokens=4, decode_runs=3)
    for key in ("forward_ms", "tokens_per_s", "bandwidth_gb_s", "bytes_per_token"):
        assert key in r
    runs = r["tokens_per_s_runs"]
    assert len(runs) == 3 and sorted(runs)[1] == r["tokens_per_s"]  # the median
    assert set(r["forward_ms"]) == {"1", "2", "4", "5", "8", "16"}
    assert all(0 < v["min"] <= v["median"] for v in r["forward_ms"].values())
    assert set(r["prefill_tokens_per_s"]) == {"32", "256", "512"}
    assert all(v > 0 for v in r["prefill_tokens_per_s"].values())
    params = model.params

    def floats(w) -> int:  # matrices are stored in panels, rows padded to a multiple of 32
        return w.size if isinstance(w, np.ndarray) else -(-w.shape[0] // 32) * 32 * w.shape[1]

    n_floats = floats(params.embed) + floats(params.final_norm)
    n_floats += sum(floats(w) for layer in params.layers for w in vars(layer).values())
    assert r["bytes_per_token"] == r["weight_bytes"] == 4 * n_floats
    assert r["bound_tokens_per_s"] == pytest.approx(r["bandwidth_gb_s"] * 1e9 / (4 * n_floats))
    # the arithmetic roof: one multiply-add per weight (the true shapes, not the padding)
    n_weights = params.embed.shape[0] * params.embed.shape[1]
    n_weights += sum(
        w.shape[0] * w.shape[1] for layer in params.layers for w in vars(layer).values()
        if len(w.shape) == 2
    )  # fmt: skip
    assert r["fmas_per_token"] == n_weights
    assert set(r["fma_per_s"]) == set(r["compute_bound_ms"]) == set(r["forward_ms"])
    for T, rate in r["fma_per_s"].items():
        assert rate > 0
        assert r["compute_bound_ms"][T] == pytest.approx(1000 * int(T) * n_weights / rate)


def test_drafter_speedups_alternates_runs_on_a_tiny_model():
    model = tiny_model()
    prompts = {"repeats": "abcabcabcabcabc", "other": "hello world"}
    rows = bench.drafter_speedups(model, ["ngram"], k=3, new_tokens=6, prompts=prompts, runs=2)
    assert [r["prompt"] for r in rows] == ["repeats", "other"]
    for r in rows:
        assert r["same_as_plain"] and r["runs"] == 2
        assert len(r["tokens_per_s_runs"]) == len(r["plain_tokens_per_s_runs"]) == 2
        assert min(r["tokens_per_s_runs"]) <= r["tokens_per_s"] <= max(r["tokens_per_s_runs"])
        # the median of each round's ratio (runs = 2: the mean of the two)
        runs = zip(r["tokens_per_s_runs"], r["plain_tokens_per_s_runs"], strict=True)
        ratios = [a / b for a, b in runs]
        assert r["speedup"] == pytest.approx(sum(ratios) / 2)
        # sampled beside greedy, and the trace's cost
        assert r["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 0.95}
        assert r["sampled_tokens_per_s"] > 0 and r["sampled_plain_tokens_per_s"] > 0
        assert r["sampled_speedup"] > 0 and 0 <= r["sampled_alpha"] <= 1
        assert r["sampled_step_ratio"] == pytest.approx(r["sampled_step_ms"] / r["step_ms"])
        assert r["traced_tokens_per_s"] > 0 and r["trace_cost"] < 1
        assert 0 < r["trace_share"] < 1 and 0 < r["greedy_trace_share"] < 1
        # each round's own ratios, whose median the paired figures are
        assert r["speedup"] == pytest.approx(statistics.median(r["speedup_runs"]))
        assert r["sampled_speedup"] == pytest.approx(statistics.median(r["sampled_speedup_runs"]))
        assert r["trace_cost"] == pytest.approx(statistics.median(r["trace_cost_runs"]))
        steps = r["sampled_step_ratio_runs"]
        assert len(steps) == 2 and r["sampled_step_ratio_paired"] == pytest.approx(sum(steps) / 2)


def test_tree_sweep_compares_chains_and_trees_on_a_tiny_model():
    model = tiny_model()
    prompts = {"repeats": "abcabcabcabcabc"}
    rows = bench.tree_sweep(
        model, ["ngram", "early-exit"], chains=(1, 3), trees=(4, 8), new_tokens=8,
        prompts=prompts, runs=2,
    )  # fmt: skip
    settings = [("chain", 1), ("chain", 3), ("tree", 4), ("tree", 8)]
    assert [(r["drafter"], r["shape"], r["size"]) for r in rows] == [
        (d, shape, size) for d in ("ngram", "early-exit") for shape, size in settings
    ]
    for r in rows:
        assert r["same_as_plain"] and r["runs"] == 2 and len(r["speedup_runs"]) == 2
        assert r["speedup"] == pytest.approx(statistics.median(r["speedup_runs"]))
        assert r["tokens_per_s"] > 0 and r["plain_tokens_per_s"] > 0
        assert 1 <= r["tau"] <= r["size"] + 1
        # a chain drafts at most k tokens a step; a tree at most its node budget
        assert 0 <= r["drafted_per_step"] <= r["size"]
        assert all(a is None or 0 <= a <= 1 for a in r["acceptance_by_depth"])
        assert r["draft_ms_per_step"] >= 0 and r["verify_ms_per_step"] > 0


def test_plain_sampling_cost_on_a_tiny_model():
    rows = bench.plain_sampling_cost(tiny_model(), new_tokens=6, prompts={"a": "abc"}, runs=3)
    assert [r["prompt"] for r in rows] == ["a"] and rows[0]["runs"] == 3
    assert rows[0]["greedy_ms_per_token"] > 0 and rows[0]["sampled_ms_per_token"] > 0
    assert rows[0]["ratio"] > 0


def test_int8_error_is_small_but_not_zero():
    q = bench.quantization_error(tiny_model(), tiny_model(weights="int8"), ["abc", "hello"])
    assert 0 < q["max_logit_change"] < 0.5 and q["positions"] == 10


@pytest.mark.slow
def test_generate_and_predict_json_on_the_real_model(real_checkpoint, capsys):
    assert main(["generate", "--prompt", "The capital of France is", "--max-new-tokens", "5",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert {"prompt_ids", "ids", "text", "prefill_s", "tokens_per_s"} <= set(out)
    assert out["prompt_ids"][0] == 2 and len(out["ids"]) == 5 and out["tokens_per_s"] > 0

    assert main(["predict", "--prompt", "The capital of France is", "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == [2, 818, 5279, 529, 7001, 563]
    assert [set(row) for row in out["top"]] == [{"id", "token", "logit", "prob"}] * 3
    probs = [row["prob"] for row in out["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


@pytest.mark.slow
def test_bench_json_keys_on_the_real_model(real_checkpoint, capsys):
    argv = ["bench", "--repeats", "1", "--decode-tokens", "3", "--no-numpy", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["forward_ms"]) == {"1", "2", "4", "5", "8", "16"}
    assert set(out["forward_ms"]["4"]) == {"min", "median"}
    assert out["bytes_per_token"] > 1_000_000_000  # float32: about 1.07 GB of weights per token
    assert out["bound_tokens_per_s"] > 0 and out["tokens_per_s"] > 0
    assert set(out["prefill_tokens_per_s"]) == {"32", "256", "512"}
    assert set(out["compute_bound_ms"]) == set(out["fma_per_s"]) == set(out["forward_ms"])
    assert 250_000_000 < out["fmas_per_token"] < 300_000_000  # 268 M weights, the head 168 M
