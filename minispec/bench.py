"""`minispec bench`: why verifying k+1 tokens costs about as much as decoding one, in numbers.

The measurements themselves are in `roofline` (forward_times, memory_bandwidth_gb_s,
weight_bytes, decode_tokens_per_s); this module puts them together as the command prints them:

- forward_ms[T]: one forward pass of T new tokens after a context of 256, min and median
  (T in `roofline.T_VALUES`, or 1..17 with token trees: `TREE_T_VALUES`);
- tokens_per_s: plain greedy decoding speed;
- prefill_tokens_per_s[n]: prompt tokens per second of a prefill of n tokens;
- bandwidth_gb_s: how fast the kernel streams one token's worth of weight bytes (a one-row
  product with a packed matrix of weight_bytes bytes, `roofline.memory_bandwidth_gb_s`);
- weight_bytes: the weight bytes one forward pass reads (`roofline.weight_bytes`; also under
  its first name, bytes_per_token, which counts the same bytes: weights only, no KV cache);
- bound_tokens_per_s = bandwidth / weight_bytes: the memory-bound ceiling of decoding;
- fma_per_s[T], compute_bound_ms[T]: the other roof, the arithmetic: the kernel's multiply-adds
  per second with T rows on a weight in cache, and the least time T tokens' fmas_per_token
  multiply-adds each can take at that rate (`roofline.fma_rate`).

and, with drafters, speculative decoding against plain decoding on the same prompts, greedy and
sampled, with what the trace costs (`drafter_speedups`), plain sampled decoding against plain
greedy (`plain_sampling_cost`), how much int8 weights change the logits
(`quantization_error`), and chains of k = 1..4 against token trees of 4 to 16 nodes
(`tree_sweep`), beside forward times for T = 1..17 (a tree's pass is 1 + its nodes rows).
Timing claims live here, never in tests.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from minispec.generate import Generation, generate
from minispec.kv_cache import new_cache
from minispec.measure import PROMPTS, paired_ratios, speedup
from minispec.model import Model, forward
from minispec.roofline import (
    T_VALUES,
    decode_tokens_per_s,
    fma_rate,
    fmas_per_token,
    forward_times,
    memory_bandwidth_gb_s,
    prefill_tokens_per_s,
    weight_bytes,
)
from minispec.sampling import GREEDY, SamplingParams

if TYPE_CHECKING:
    from minispec.speculative import SpeculativeGeneration


def run_bench(
    model: Model,
    context: int = 256,
    repeats: int = 5,
    decode_tokens: int = 48,
    prompt_ids: list[int] | None = None,
    decode_runs: int = 3,
    t_values: tuple[int, ...] = T_VALUES,
) -> dict:
    """The table `minispec bench` prints, as one JSON-ready dict.

    Decoding is timed decode_runs times and the median counts: on a shared machine one run
    now and then stalls for seconds.
    """
    if prompt_ids is None:
        prompt_ids = np.random.default_rng(1).integers(4, model.config.vocab_size, context).tolist()
    fwd = forward_times(model, context, t_values, repeats)
    tps_runs = [decode_tokens_per_s(model, prompt_ids, decode_tokens) for _ in range(decode_runs)]
    tps = statistics.median(tps_runs)
    prefill = prefill_tokens_per_s(model, repeats=max(1, repeats // 2))
    per_token = weight_bytes(model)
    bandwidth = memory_bandwidth_gb_s(per_token, weights=model.weights)
    bound = bandwidth * 1e9 / per_token
    rates = fma_rate(model.weights, tuple(fwd), packed=model.fast)
    fmas = fmas_per_token(model)
    return {
        "model": model.name,
        "weights": model.weights,
        "context": context,
        "forward_ms": {str(T): v for T, v in fwd.items()},
        "forward_ratio": {str(T): fwd[T]["min"] / fwd[1]["min"] for T in fwd},
        "tokens_per_s": tps,
        "tokens_per_s_runs": tps_runs,
        "prefill_tokens_per_s": {str(n): v for n, v in prefill.items()},
        "bandwidth_gb_s": bandwidth,
        "bytes_per_token": per_token,
        "weight_bytes": per_token,
        "bound_tokens_per_s": bound,
        "fraction_of_bound": tps / bound,
        "fmas_per_token": fmas,
        "fma_per_s": {str(T): v for T, v in rates.items()},
        "compute_bound_ms": {str(T): 1000 * T * fmas / v for T, v in rates.items()},
    }


def quantization_error(float32_model: Model, quantized: Model, texts: list[str]) -> dict:
    """How much int8 weights change the model: over every position of the texts, the largest
    logit change against float32 and how often the greedy (argmax) token differs."""
    from minispec.tokenizer import encode

    max_change, changed, positions = 0.0, 0, 0
    for text in texts:
        ids = encode(float32_model.tokenizer, text)
        a = forward(float32_model, ids, new_cache(float32_model.config, len(ids)))  # (T, vocab)
        b = forward(quantized, ids, new_cache(quantized.config, len(ids)))
        max_change = max(max_change, float(np.abs(a - b).max()))
        changed += int((a.argmax(-1) != b.argmax(-1)).sum())
        positions += len(ids)
    return {
        "max_logit_change": max_change,
        "greedy_token_changed": changed / positions,
        "positions": positions,
    }


SAMPLED = SamplingParams(temperature=0.7, top_p=0.95)  # the app's default sampling


def drafter_speedups(
    model: Model,
    specs: list[str],
    k: int = 4,
    new_tokens: int = 64,
    prompts: dict[str, str] | None = None,
    runs: int = 3,
    sampling: SamplingParams = SAMPLED,
) -> list[dict]:
    """Speculative decoding with each drafter against plain decoding, prompt by prompt, greedy
    and sampled, and what recording the trace costs.

    Each round runs plain decoding greedy and sampled, then every drafter greedy, sampled and
    sampled with its trace; `runs` rounds, and the median of each figure counts. Every ratio is
    `measure.speedup`, the median over rounds of a run's speed over its own round's baseline:
    `speedup` (greedy speculative over plain greedy) and `sampled_speedup` (sampled over plain
    sampled); tokens_per_s and plain_tokens_per_s are the medians of the runs themselves.
    `step_ms` and `sampled_step_ms`: decoding time per draft-verify step, and their ratio;
    `trace_cost`: the share of sampled speed lost to recording the trace, 1 - speedup(traced,
    sampled), which the machine's spread blurs; `trace_share` and `greedy_trace_share`: the
    share of a traced run's decoding time spent writing its records (`Stats.trace_s`), timed
    inside the run, sampled and greedy (a greedy record computes softmaxes only to show them).
    """
    from minispec.drafters import make_drafter
    from minispec.speculative import speculative_generate
    from minispec.tokenizer import encode

    drafters = {spec: make_drafter(spec, model) for spec in specs}  # built once, reset per run
    rows = []
    for prompt_name, text in (prompts or PROMPTS).items():
        ids = encode(model.tokenizer, text)
        plain: dict[str, list] = {"greedy": [], "sampled": []}
        outs: dict[tuple[str, str], list] = {}
        for _ in range(runs):
            for mode, how in (("greedy", GREEDY), ("sampled", sampling)):
                plain[mode].append(generate(model, ids, new_tokens, how, stop_at_eos=False))
            for spec, drafter in drafters.items():
                for mode, how, trace in (
                    ("greedy", GREEDY, False),
                    ("sampled", sampling, False),
                    ("traced", sampling, True),
                    ("greedy traced", GREEDY, True),
                ):
                    out = speculative_generate(
                        model, ids, drafter, k, new_tokens, how, stop_at_eos=False, trace=trace
                    )
                    outs.setdefault((spec, mode), []).append(out)
        plain_speeds = [g.tokens_per_s for g in plain["greedy"]]
        plain_speed = statistics.median(plain_speeds)
        for spec in specs:
            greedy, sampled, traced = (outs[spec, m] for m in ("greedy", "sampled", "traced"))
            speeds = [o.tokens_per_s for o in greedy]
            s, z, speed = greedy[-1].stats, sampled[-1].stats, statistics.median(speeds)
            step_ms = statistics.median(step_time_ms(o) for o in greedy)
            sampled_step_ms = statistics.median(step_time_ms(o) for o in sampled)
            # Each round's own ratios, paired as `speedup` pairs its runs (`paired_ratios`).
            pairs = list(zip(greedy, sampled, strict=True))
            step_ratios = [step_time_ms(b) / step_time_ms(a) for a, b in pairs]
            trace_costs = [1 - r for r in paired_ratios(traced, sampled)]
            rows.append(
                {
                    "prompt": prompt_name,
                    "drafter": spec,
                    "k": k,
                    "tokens_per_s": speed,
                    "plain_tokens_per_s": plain_speed,
                    "speedup": speedup(greedy, plain["greedy"]),
                    "alpha": s.alpha,
                    "tau": s.tau,
                    "expected_tau": s.expected_tau,
                    "same_as_plain": greedy[-1].ids == plain["greedy"][-1].ids,
                    "runs": runs,
                    "tokens_per_s_runs": speeds,
                    "plain_tokens_per_s_runs": plain_speeds,
                    "sampling": asdict(sampling),
                    "sampled_tokens_per_s": median_speed(sampled),
                    "sampled_plain_tokens_per_s": median_speed(plain["sampled"]),
                    "sampled_speedup": speedup(sampled, plain["sampled"]),
                    "sampled_alpha": z.alpha,
                    "sampled_tau": z.tau,
                    "step_ms": step_ms,
                    "sampled_step_ms": sampled_step_ms,
                    "sampled_step_ratio": sampled_step_ms / step_ms,
                    "traced_tokens_per_s": median_speed(traced),
                    "trace_cost": 1 - speedup(traced, sampled),
                    "sampled_step_ratio_runs": step_ratios,
                    "sampled_step_ratio_paired": statistics.median(step_ratios),
                    "trace_cost_runs": trace_costs,
                    "trace_share": statistics.median(map(trace_share, traced)),
                    "greedy_trace_share": statistics.median(
                        map(trace_share, outs[spec, "greedy traced"])
                    ),
                    "speedup_runs": paired_ratios(greedy, plain["greedy"]),
                    "sampled_speedup_runs": paired_ratios(sampled, plain["sampled"]),
                }
            )
    return rows


def plain_sampling_cost(
    model: Model,
    new_tokens: int = 64,
    prompts: dict[str, str] | None = None,
    runs: int = 3,
    sampling: SamplingParams = SAMPLED,
) -> list[dict]:
    """Plain decoding, greedy and sampled in alternation: milliseconds per token, per prompt.

    `ratio` is the median of each round's sampled time per token over its greedy one (1 /
    `measure.speedup(sampled, greedy)`): what shaping and drawing from 262,144 probabilities
    adds to a forward pass."""
    from minispec.tokenizer import encode

    rows = []
    for prompt_name, text in (prompts or PROMPTS).items():
        ids = encode(model.tokenizer, text)
        greedy, sampled = [], []
        for _ in range(runs):
            greedy.append(generate(model, ids, new_tokens, GREEDY, stop_at_eos=False))
            sampled.append(generate(model, ids, new_tokens, sampling, stop_at_eos=False))
        rows.append(
            {
                "prompt": prompt_name,
                "sampling": asdict(sampling),
                "greedy_ms_per_token": statistics.median(1000 / g.tokens_per_s for g in greedy),
                "sampled_ms_per_token": statistics.median(1000 / g.tokens_per_s for g in sampled),
                "ratio": 1 / speedup(sampled, greedy),
                "runs": runs,
            }
        )
    return rows


TREE_T_VALUES = tuple(range(1, 18))  # a tree of up to 16 nodes is a pass of up to 17 rows
TREE_CHAINS = (1, 2, 3, 4)  # chain settings k the tree sweep compares
TREE_SIZES = (4, 8, 12, 16)  # tree settings: nodes drafted per step


def tree_sweep(
    model: Model,
    specs: list[str],
    chains: tuple[int, ...] = TREE_CHAINS,
    trees: tuple[int, ...] = TREE_SIZES,
    new_tokens: int = 64,
    prompts: dict[str, str] | None = None,
    runs: int = 3,
    sampling: SamplingParams = GREEDY,
) -> list[dict]:
    """Chains against token trees, per drafter and prompt: tokens per target forward and speed.

    One row per setting: a chain of k (`"shape": "chain"`, `"size": k`) or a tree of N nodes
    (`"shape": "tree"`, `"size": N`). Each round times plain decoding, then every setting of
    every drafter; `speedup` is `measure.speedup` over that round's plain run, tau and the
    per-step draft and verify times are the last round's (tau does not change between rounds
    when greedy). `acceptance_by_depth`: of the steps that reached depth d of their draft, the
    share whose target kept a token there.
    """
    from minispec.drafters import make_drafter
    from minispec.speculative import speculative_generate
    from minispec.tokenizer import encode

    drafters = {spec: make_drafter(spec, model) for spec in specs}
    settings = [("chain", k) for k in chains] + [("tree", n) for n in trees]
    rows = []
    for prompt_name, text in (prompts or PROMPTS).items():
        ids = encode(model.tokenizer, text)
        plain: list[Generation] = []
        outs: dict[tuple[str, str, int], list] = {}
        for _ in range(runs):
            plain.append(generate(model, ids, new_tokens, sampling, stop_at_eos=False))
            for spec, drafter in drafters.items():
                for shape, size in settings:
                    k, tree = (size, None) if shape == "chain" else (max(chains), size)
                    out = speculative_generate(
                        model, ids, drafter, k, new_tokens, sampling,
                        stop_at_eos=False, trace=False, tree=tree,
                    )  # fmt: skip
                    outs.setdefault((spec, shape, size), []).append(out)
        for spec in specs:
            for shape, size in settings:
                runs_ = outs[spec, shape, size]
                s = runs_[-1].stats
                rows.append(
                    {
                        "prompt": prompt_name,
                        "drafter": spec,
                        "shape": shape,
                        "size": size,
                        "sampling": asdict(sampling),
                        "tau": s.tau,
                        "tokens_per_s": median_speed(runs_),
                        "plain_tokens_per_s": median_speed(plain),
                        "speedup": speedup(runs_, plain),
                        "speedup_runs": paired_ratios(runs_, plain),
                        "same_as_plain": runs_[-1].ids == plain[-1].ids,
                        "draft_ms_per_step": 1000 * s.draft_s / max(1, s.steps),
                        "verify_ms_per_step": 1000 * s.verify_s / max(1, s.steps),
                        "drafted_per_step": s.drafted / max(1, s.steps),
                        "acceptance_by_depth": s.acceptance_by_position,
                        "runs": runs,
                    }
                )
    return rows


def step_time_ms(out: SpeculativeGeneration) -> float:
    """Decoding time per draft-verify step (drafting, verifying, the rule, the rollback)."""
    return 1000 * out.stats.decode_s / max(1, out.stats.steps)


def trace_share(out: SpeculativeGeneration) -> float:
    """The share of a traced run's decoding time spent writing its trace's records."""
    return out.stats.trace_s / out.stats.decode_s if out.stats.decode_s > 0 else 0.0


def median_speed(outs: list[Generation]) -> float:
    return statistics.median(o.tokens_per_s for o in outs)
