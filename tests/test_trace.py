"""The trace: complete, self-consistent, JSON round trip, replay without the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minispec.drafters import make_drafter
from minispec.sampling import SamplingParams
from minispec.speculative import speculative_generate
from minispec.stats import Stats, expected_tokens_per_forward
from minispec.tiny import tiny_model
from minispec.trace import (
    STEP_FIELDS,
    load_trace,
    replay,
    replayed_ids,
    save_trace,
    stats_from_trace,
    trace_json,
)

STEP_KEYS = set(
    "step context_length kv_length_before drafted target decisions accepted next_token "
    "residual_top emitted emitted_text kv_length_after verify_forwards draft_s verify_s".split()
)


@pytest.fixture(scope="module")
def runs():
    target = tiny_model(seed=0)
    ids = target.tokenizer.encode("the trace of a run; the trace").ids

    def run(spec, k, seed=0, **sampling):
        drafter = make_drafter(spec, target)
        params = SamplingParams(**sampling)
        return speculative_generate(target, ids, drafter, k, 24, params, seed, stop_at_eos=False)

    return {
        "greedy": run("int8", 4),
        "sampled": run("early-exit:3", 3, temperature=0.9, top_p=0.95, seed=3),
        "ngram": run("ngram", 5, temperature=1.0, seed=1),
    }


@pytest.mark.parametrize("run", ["greedy", "sampled", "ngram"])
def test_records_are_complete_and_consistent(runs, run):
    g = runs[run]
    trace = g.trace
    assert trace.ids == g.ids and trace.text == g.text
    context = len(trace.prompt_ids) + 1  # the prefill's token
    for i, r in enumerate(trace.steps):
        assert set(r) == STEP_KEYS
        assert r["verify_forwards"] == 1  # one verification pass per step, always
        assert r["step"] == i and r["context_length"] == context
        assert r["kv_length_before"] == context - 1
        n, j = len(r["drafted"]), r["accepted"]
        assert len(r["target"]) == n + 1  # p for every draft, and for the bonus
        assert [d["accepted"] for d in r["decisions"]] == [True] * j + [False] * (
            len(r["decisions"]) - j
        )
        assert len(r["decisions"]) == (j if j == n else j + 1)
        assert r["next_token"]["kind"] == ("bonus" if j == n else "corrected")
        assert r["kv_length_after"] == r["kv_length_before"] + 1 + j
        assert r["emitted"] == [d["token"] for d in r["drafted"][:j]] + [r["next_token"]["token"]]
        for d in r["decisions"]:
            assert d["ratio"] == pytest.approx(d["p"] / d["q"])
            if trace.sampling["greedy"]:
                assert d["u"] is None
                assert d["accepted"] == (d["token"] == d["target_argmax"])
            else:
                assert d["accept_probability"] == pytest.approx(min(1.0, d["ratio"]))
                assert d["accepted"] == (d["u"] < d["accept_probability"])
        rejected_sampled = j < n and not trace.sampling["greedy"]
        assert (r["residual_top"] is not None) == rejected_sampled
        assert r["draft_s"] >= 0 and r["verify_s"] > 0
        context += len(r["emitted"])


def test_the_documented_schema_is_the_written_one():
    assert set(STEP_FIELDS) == STEP_KEYS | {"tree"}  # "tree": on token-tree steps only
    assert all(isinstance(meaning, str) and meaning for meaning in STEP_FIELDS.values())


def test_records_carry_probabilities_and_token_text(runs):
    r = next(r for r in runs["sampled"].trace.steps if r["residual_top"])
    d = r["drafted"][0]
    assert 0 < d["q"] <= 1 and d["top_q"][0]["prob"] >= d["top_q"][-1]["prob"]
    assert isinstance(d["text"], str)
    top_p = r["target"][0]["top_p"]
    assert [e["prob"] for e in top_p] == sorted((e["prob"] for e in top_p), reverse=True)
    assert abs(sum(e["prob"] for e in r["residual_top"])) <= 1 + 1e-9
    # prompt lookup has no q: one-hot on its token
    ngram_drafts = [d for s in runs["ngram"].trace.steps for d in s["drafted"]]
    assert ngram_drafts and all(d["q"] == 1.0 and d["top_q"] == [] for d in ngram_drafts)


def test_save_load_round_trip_and_replay(runs, tmp_path):
    for name, g in runs.items():
        path = tmp_path / f"{name}.json"
        save_trace(g.trace, path)
        assert path.read_text(encoding="utf-8") == trace_json(g.trace)  # one serialiser
        loaded = load_trace(path)
        assert loaded.to_dict() == json.loads(json.dumps(g.trace.to_dict()))
        assert replayed_ids(loaded) == g.ids  # no model needed
        recount = stats_from_trace(loaded)
        for key in ("steps", "drafted", "verified", "accepted", "emitted", "new_tokens"):
            assert getattr(recount, key) == getattr(g.stats, key), key
        assert recount.alpha == g.stats.alpha and recount.tau == g.stats.tau
        for step in replay(loaded):
            assert len(step.context) == step.record["context_length"]


def test_replay_notices_a_tampered_trace(runs, tmp_path):
    path = tmp_path / "t.json"
    save_trace(runs["greedy"].trace, path)
    d = json.loads(path.read_text())
    d["steps"][0]["emitted"][0] += 1
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="emitted tokens"):
        replayed_ids(load_trace(path))
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a minispec trace"):
        load_trace(path)


def test_stats_numbers():
    s = Stats(k=4)
    s.add_step(4, [True, True, False], 3, 0.1, 0.2)  # 2 accepted + corrected
    s.add_step(4, [True] * 4, 5, 0.1, 0.2)  # all accepted + bonus
    s.add_step(0, [], 1, 0.0, 0.2)  # nothing drafted: a plain step
    s.new_tokens = 1 + 9
    assert (s.drafted, s.verified, s.accepted, s.emitted) == (8, 7, 6, 9)
    assert s.alpha == 6 / 7 and s.draft_acceptance == 6 / 8
    assert s.tau == 3.0 and s.target_forwards == 4
    assert s.acceptance_by_position == [1.0, 1.0, 0.5, 1.0]
    assert s.expected_tau == pytest.approx(expected_tokens_per_forward(6 / 7, 4))
    assert expected_tokens_per_forward(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens_per_forward(1.0, 3) == 4.0
    assert expected_tokens_per_forward(0.0, 3) == 1.0
    d = s.to_dict()
    for key in ("drafted", "accepted", "alpha", "tau", "target_forwards", "expected_tau"):
        assert key in d
    assert json.loads(json.dumps(d))["alpha"] == s.alpha


def test_expected_tau_tracks_measured_tau_for_iid_acceptance():
    """Accept each draft with probability a, independently: measured tau -> the formula."""
    rng = np.random.default_rng(0)
    for a, k in [(0.3, 4), (0.8, 4), (0.95, 8)]:
        s = Stats(k=k)
        for _ in range(20_000):
            decisions = []
            for _ in range(k):
                decisions.append(bool(rng.random() < a))
                if not decisions[-1]:
                    break
            s.add_step(k, decisions, sum(decisions) + 1, 0, 0)
        assert math.isclose(s.alpha, a, abs_tol=0.01)
        assert math.isclose(s.tau, s.expected_tau, rel_tol=0.02)
