"""The `minispec` command: a thin shell over the package's public functions.

    minispec generate --prompt "def fib(n):" --max-new-tokens 40
    minispec generate --prompt "def fib(n):" --drafter ngram --k 4 --trace run.json --json
    minispec generate --prompt "def fib(n):" --drafter int8 --tree 8 --temperature 0.8
    minispec predict --prompt "The capital of France is" --top 5 --json
    minispec replay run.json --html run.html

Every `--json` output is one object whose keys are a public contract: keys may be added, never
renamed or removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np

from minispec.drafters import DRAFTER_SPECS, SPEC_FORMS, check_drafter_spec, make_drafter
from minispec.errors import InputError
from minispec.generate import check_max_new_tokens, generate
from minispec.kv_cache import new_cache
from minispec.model import Model, forward, reference
from minispec.sampling import SOFTMAX, SamplingParams, check_sampling, distribution
from minispec.speculative import (
    SpeculativeGeneration,
    check_k,
    check_tree_budget,
    speculative_generate,
)
from minispec.tokenizer import encode, token_strings
from minispec.trace import save_trace
from minispec.train.recipe import Recipe


def progress(msg: str) -> None:
    """A long command's progress, one line on stderr (stdout is for its result)."""
    print(msg, file=sys.stderr, flush=True)


def load(args: argparse.Namespace) -> Model:
    from minispec.gguf_file import default_progress
    from minispec.loading import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, weights=args.weights, progress=default_progress)
    print(
        f"loaded {model.name} ({model.weights}) in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return model


def check_prompt_text(prompt: str) -> None:
    if not prompt.strip():
        raise InputError("the prompt is empty: pass some text with --prompt")


def prompt_ids(model: Model, prompt: str) -> list[int]:
    check_prompt_text(prompt)
    if model.tokenizer is None:
        raise InputError(f"{model.name} has no tokenizer.json: cannot encode a text prompt")
    return encode(model.tokenizer, prompt)


def streamer(model: Model) -> Callable[[int], None]:
    """Print tokens as they come; hold back a partial UTF-8 character until it is complete."""
    ids: list[int] = []
    shown = [0]

    def on_token(token: int) -> None:
        ids.append(token)
        text = model.tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown[0] :])
            sys.stdout.flush()
            shown[0] = len(text)

    return on_token


def cmd_generate(args: argparse.Namespace) -> dict | None:
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
    check_max_new_tokens(args.max_new_tokens)
    check_k(args.k)
    if args.tree is not None:
        check_tree_budget(args.tree)
        if args.drafter == "none":
            raise InputError(
                "--tree N drafts token trees: name a drafter with --drafter (e.g. mtp)"
            )
    check_drafter_spec(args.drafter)  # before the seconds of loading the model
    model = load(args)
    ids = prompt_ids(model, args.prompt)
    drafter = make_drafter(args.drafter, model)  # None for "none": plain decoding
    on_token = None if args.json else streamer(model)
    if on_token:
        sys.stdout.write(args.prompt)
    if drafter is None and args.trace is None and args.tree is None:
        result = generate(model, ids, args.max_new_tokens, sampling, args.seed, on_token=on_token)
    else:
        result = speculative_generate(
            model,
            ids,
            drafter,
            args.k,
            args.max_new_tokens,
            sampling,
            args.seed,
            on_token=on_token,
            trace=args.trace is not None,
            tree=args.tree,
        )
        if args.trace is not None:
            save_trace(result.trace, args.trace)
    stats = result.stats if isinstance(result, SpeculativeGeneration) else None
    if not args.json:
        print()
        print(
            f"[{len(result.ids)} tokens, prefill {result.prefill_s:.2f} s, "
            f"{result.tokens_per_s:.1f} tokens/s, stopped by {result.stopped_by}]",
            file=sys.stderr,
        )
        if stats is not None and drafter is not None:
            shape = f"k={args.k}" if args.tree is None else f"trees of {args.tree} nodes"
            print(
                f"[{drafter.name}, {shape}: accepted {stats.accepted} of {stats.drafted} "
                f"drafted (alpha {stats.alpha:.2f}), {stats.tau:.2f} tokens per target forward "
                f"(expected {stats.expected_tau:.2f}), {stats.target_forwards} target forwards]",
                file=sys.stderr,
            )
        return None
    out = {
        "prompt_ids": result.prompt_ids,
        "ids": result.ids,
        "text": result.text,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "tokens_per_s": result.tokens_per_s,
        "stopped_by": result.stopped_by,
        "model": model.name,
        "weights": model.weights,
    }
    if stats is not None:
        out["drafter"] = drafter.name if drafter is not None else "none"
        out["k"] = args.k
        out["tree"] = args.tree
        out["stats"] = stats.to_dict()
    if args.trace is not None:
        out["trace"] = str(args.trace)
    return out


def cmd_predict(args: argparse.Namespace) -> dict | None:
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    model = load(args)
    ids = prompt_ids(model, args.prompt)
    logits = forward(model, ids, new_cache(model.config, len(ids)), last_only=True)[-1]
    probs = distribution(logits, SOFTMAX)  # the model's own distribution, temperature 1
    best = np.argsort(-logits, kind="stable")[: args.top]
    top = [
        {"id": int(i), "token": tok, "logit": float(logits[i]), "prob": float(probs[i])}
        for i, tok in zip(best, token_strings(model.tokenizer, best.tolist()), strict=True)
    ]
    result = {"prompt_ids": ids, "prompt_tokens": token_strings(model.tokenizer, ids), "top": top}
    if args.json:
        return result
    print(
        "prompt: "
        + " ".join(f"{i}:{t!r}" for i, t in zip(ids, result["prompt_tokens"], strict=True))
    )
    print(f"{'rank':>4}  {'id':>7}  {'prob':>7}  {'logit':>8}  token")
    for rank, row in enumerate(top, 1):
        i, prob, logit, token = row["id"], row["prob"], row["logit"], row["token"]
        print(f"{rank:>4}  {i:>7}  {prob:>7.2%}  {logit:>8.3f}  {token!r}")
    return None


def cmd_bench(args: argparse.Namespace) -> dict | None:
    from minispec import bench

    if args.context < 1 or args.repeats < 1 or args.runs < 1:
        raise InputError("--context, --repeats and --runs must be >= 1")
    if args.drafter:
        check_k(args.k)
        for spec in args.drafter:
            check_drafter_spec(spec)
    if args.trees and not args.drafter:
        raise InputError("--trees compares drafters: name them with --drafter (e.g. --drafter mtp)")
    model = load(args)
    say = progress  # on stderr, so that --json keeps stdout for the one JSON object
    say(f"timing forward passes after a {args.context}-token context, then decoding ...")
    timing = dict(repeats=args.repeats, decode_tokens=args.decode_tokens, decode_runs=args.runs)
    t_values = bench.TREE_T_VALUES if args.trees else bench.T_VALUES
    result = bench.run_bench(model, args.context, t_values=t_values, **timing)
    if args.numpy and model.weights == "float32":
        say("the same without the Numba kernels (NumPy's BLAS for every T) ...")
        result["numpy"] = bench.run_bench(reference(model), args.context, **timing)
    if model.weights == "int8":
        say("int8 against float32: logit changes and greedy-token changes ...")
        from minispec.loading import load_model

        float32_model = load_model(args.model)
        result["int8_vs_float32"] = bench.quantization_error(
            float32_model, model, list(bench.PROMPTS.values())
        )
    if args.drafter:
        say(f"speculative decoding with {', '.join(args.drafter)}, k = {args.k} ...")
        result["drafters"] = bench.drafter_speedups(
            model, args.drafter, args.k, args.new_tokens, runs=args.runs
        )
        sampled = result["sampled_speedups"] = {}  # drafter -> prompt -> sampled speedup
        for d in result["drafters"]:
            sampled.setdefault(d["drafter"], {})[d["prompt"]] = d["sampled_speedup"]
        say("plain decoding, greedy against sampled ...")
        result["plain_sampled"] = bench.plain_sampling_cost(model, args.new_tokens, runs=args.runs)
    if args.trees:
        sizes = ", ".join(map(str, bench.TREE_SIZES))
        say(f"chains of k = 1..4 against trees of {sizes} nodes, greedy ...")
        result["trees"] = bench.tree_sweep(
            model, args.drafter, new_tokens=args.new_tokens, runs=args.runs
        )
    if args.json:
        return result
    print_bench(result)
    return None


def print_bench(r: dict) -> None:
    numpy = r.get("numpy")
    print(f"{r['model']} ({r['weights']}), context {r['context']} tokens")
    print(
        f"{'T':>4}  {'forward min':>12}  {'median':>9}  {'x T=1':>6}  {'arithmetic':>10}"
        + ("  NumPy only" * bool(numpy))
    )
    for T, v in r["forward_ms"].items():
        line = f"{T:>4}  {v['min']:>9.1f} ms  {v['median']:>6.1f} ms  {r['forward_ratio'][T]:>6.2f}"
        line += f"  {r['compute_bound_ms'][T]:>7.1f} ms"
        if numpy:
            line += f"  {numpy['forward_ms'][T]['min']:>7.1f} ms ({numpy['forward_ratio'][T]:.2f}x)"
        print(line)
    runs = ", ".join(f"{x:.1f}" for x in r["tokens_per_s_runs"])
    print(
        f"decode: {r['tokens_per_s']:.1f} tokens/s (median of {runs})"
        + (f"; NumPy only: {numpy['tokens_per_s']:.1f}" if numpy else "")
    )

    def prefill(result: dict) -> str:
        return ", ".join(f"{v:.0f} at {n}" for n, v in result["prefill_tokens_per_s"].items())

    numpy_prefill = f"; NumPy only: {prefill(numpy)}" if numpy else ""
    print(f"prefill: {prefill(r)} prompt tokens/s{numpy_prefill}")
    print(
        f"memory bandwidth {r['bandwidth_gb_s']:.1f} GB/s, {r['weight_bytes'] / 1e6:.0f} MB of "
        f"weights per token -> bound {r['bound_tokens_per_s']:.1f} tokens/s "
        f"(decode reaches {r['fraction_of_bound']:.0%})"
    )
    rates = ", ".join(f"{v / 1e9:.0f} at T={T}" for T, v in r["fma_per_s"].items())
    print(
        f"arithmetic: {r['fmas_per_token'] / 1e6:.0f} M multiply-adds per token; the kernel "
        f"does {rates} GFMA/s on weights in cache: the 'arithmetic' column, the least a "
        "forward of T tokens can take"
    )
    if "int8_vs_float32" in r:
        q = r["int8_vs_float32"]
        print(
            f"int8 vs float32 over {q['positions']} positions: largest logit change "
            f"{q['max_logit_change']:.3f}, greedy token changed at {q['greedy_token_changed']:.1%}"
        )
    for d in r.get("drafters", []):
        print(
            f"{d['prompt']:>10} {d['drafter']:>12} k={d['k']}: "
            f"{d['tokens_per_s']:6.1f} tokens/s vs {d['plain_tokens_per_s']:.1f} plain "
            f"= {d['speedup']:.2f}x, alpha {d['alpha']:.2f}, tau {d['tau']:.2f} "
            f"(expected {d['expected_tau']:.2f}), same output: {d['same_as_plain']}"
        )
        print(
            f"{'':>10} {'sampled':>12}    {d['sampled_tokens_per_s']:6.1f} tokens/s vs "
            f"{d['sampled_plain_tokens_per_s']:.1f} plain = {d['sampled_speedup']:.2f}x, alpha "
            f"{d['sampled_alpha']:.2f}, tau {d['sampled_tau']:.2f}; a step {d['step_ms']:.1f} ms "
            f"greedy, {d['sampled_step_ms']:.1f} sampled ({d['sampled_step_ratio']:.2f}x); "
            f"the trace costs {d['trace_cost']:.1%} of the speed; writing it takes "
            f"{d['trace_share']:.1%} of a sampled run, {d['greedy_trace_share']:.1%} of a "
            "greedy one"
        )
    for t in r.get("trees", []):
        print(
            f"{t['prompt']:>10} {t['drafter']:>12} {t['shape']:>5} {t['size']:>2}: tau "
            f"{t['tau']:.2f}, {t['tokens_per_s']:6.1f} tokens/s = {t['speedup']:.2f}x plain; "
            f"a step drafts {t['drafted_per_step']:.1f} in {t['draft_ms_per_step']:.1f} ms, "
            f"verifies in {t['verify_ms_per_step']:.1f} ms; same output: {t['same_as_plain']}"
        )
    for p in r.get("plain_sampled", []):
        print(
            f"{p['prompt']:>10} {'plain':>12}      {p['greedy_ms_per_token']:.1f} ms a token "
            "greedy, "
            f"{p['sampled_ms_per_token']:.1f} sampled ({p['ratio']:.2f}x)"
        )


def cmd_replay(args: argparse.Namespace) -> dict | None:
    """A recorded trace as one self-contained web page; no model is loaded."""
    from minispec.replay_html import write_replay_html

    size = write_replay_html(args.trace, args.html)
    result = {"html": str(args.html), "bytes": size}
    if args.json:
        return result
    print(f"wrote {args.html} ({size / 1e3:.0f} kB): open it in any browser", file=sys.stderr)
    return None


def cmd_train_mtp(args: argparse.Namespace) -> dict | None:
    """Make the teacher-forced data (or read it back), train the MTP drafter, save it."""
    from pathlib import Path

    from minispec.drafters.mtp import default_kv_layer, save_mtp
    from minispec.train import mtp, mtp_data

    if min(args.positions, args.steps, args.batch, args.length - args.unroll - 1) < 1:
        raise InputError("--positions, --steps and --batch must be >= 1, --length > --unroll + 1")
    recipe = recipe_from_args(args)
    model = load(args)
    say = progress  # on stderr, so that --json keeps stdout for the one JSON object
    t0 = time.perf_counter()
    if args.data and Path(args.data).is_file():
        data = mtp_data.load_data(args.data)
        say(f"read {data.tokens.size} prepared positions from {args.data}")
    else:
        data = mtp_data.make_data(model, default_kv_layer(model), recipe, say)
        if args.data:
            mtp_data.save_data(args.data, data)
    data_s = time.perf_counter() - t0
    params, cfg, report = mtp.train_mtp(model, data, recipe, say)
    report.update(data_seconds=data_s)
    # The weights record the recipe (report["settings"]), not this machine's command line.
    save_mtp(args.out, params, cfg, model, info=report)
    report.update(command=" ".join(sys.argv), out=str(args.out))
    # The printed JSON keeps the settings' earlier names beside the recipe's: scripts read them.
    report["settings"].update(steps=recipe.adam_steps, n_steps=recipe.draft_steps)
    say(
        f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB) after "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return report if args.json else None


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The train-mtp options as a Recipe (with no options: `Recipe()`, the shipped drafter's)."""
    return Recipe(
        positions=args.positions,
        length=args.length,
        own_tokens=args.own_tokens,
        greedy_tokens=args.greedy_tokens,
        width=args.width,
        d_ff=args.d_ff,
        head_size=args.head_size,
        adam_steps=args.steps,
        batch=args.batch,
        draft_steps=args.unroll,
        lr=args.lr,
        seed=args.seed,
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="PATH",
        help="a Hugging Face Gemma 3 folder or a .gguf file (default: the packaged Gemma 3 270M)",
    )
    p.add_argument(
        "--weights", choices=["float32", "int8"], default="float32", help="weight format in memory"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _mtp_default() -> object:
    from minispec.drafters.mtp import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minispec",
        description="Gemma 3 and speculative decoding in readable NumPy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="continue a prompt", description="Continue a prompt.")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument(
        "--max-new-tokens", type=int, default=32, help="stop after this many (default 32)"
    )
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    g.add_argument(
        "--drafter",
        default="none",
        metavar="{" + ",".join(DRAFTER_SPECS) + "}",
        help=f"speculative decoding with this drafter (default none: plain decoding); {SPEC_FORMS}",
    )
    g.add_argument("--k", type=int, default=4, help="tokens drafted per step, 1..16 (default 4)")
    g.add_argument(
        "--tree",
        type=int,
        metavar="N",
        help="draft a token tree of up to N nodes per step (1..64) instead of a chain of k: "
        "several guesses per position, verified in one forward; the drafter must propose trees",
    )
    g.add_argument("--trace", metavar="FILE", help="write the step-by-step trace (JSON) here")
    add_model_args(g)
    g.set_defaults(run=cmd_generate)

    p = sub.add_parser(
        "predict",
        help="show the next-token distribution",
        description="Show the next token's top K.",
    )
    p.add_argument("--prompt", required=True, help="the text whose next token to predict")
    p.add_argument("--top", type=int, default=10, help="how many tokens to show (default 10)")
    add_model_args(p)
    p.set_defaults(run=cmd_predict)

    b = sub.add_parser(
        "bench",
        help="measure forward-pass time against T, decode speed and the memory bound",
        description="Measure why verification is nearly free: forward time for T = 1..16 new "
        "tokens, decode tokens/s, memory bandwidth and the bandwidth bound; optionally "
        "speculative decoding with drafters against plain decoding.",
    )
    b.add_argument("--context", type=int, default=256, help="tokens already in the cache (256)")
    b.add_argument("--repeats", type=int, default=5, help="timed runs per T (default 5)")
    b.add_argument("--decode-tokens", type=int, default=48, help="tokens to decode (default 48)")
    b.add_argument(
        "--no-numpy", dest="numpy", action="store_false", help="skip the NumPy-only comparison"
    )
    b.add_argument(
        "--drafter",
        action="append",
        metavar="SPEC",
        help="also compare this drafter with plain decoding (repeatable): "
        + ", ".join(spec for spec in DRAFTER_SPECS if spec != "none"),
    )
    b.add_argument("--k", type=int, default=4, help="tokens drafted per step (default 4)")
    b.add_argument("--new-tokens", type=int, default=64, help="tokens per drafter run (64)")
    b.add_argument(
        "--trees",
        action="store_true",
        help="also compare each drafter's chains (k = 1..4) with token trees of 4, 8, 12 and "
        "16 nodes (greedy), and time forward passes for T = 1..17",
    )
    b.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs of the decoding speed, and alternating runs of plain decoding and of each "
        "drafter per prompt; medians count (3)",
    )
    add_model_args(b)
    b.set_defaults(run=cmd_bench)

    rp = sub.add_parser(
        "replay",
        help="write a recorded trace as one web page that steps through it, offline",
        description="Write a trace (from generate --trace, or the app's download) as one "
        "self-contained HTML file: open it in any browser, without Python, a server or the "
        "network, and step through every draft, verification and acceptance decision.",
    )
    rp.add_argument("trace", metavar="TRACE.json", help="the trace to show")
    rp.add_argument("--html", required=True, metavar="OUT.html", help="the web page to write")
    rp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    rp.set_defaults(run=cmd_replay)

    t = sub.add_parser(
        "train-mtp",
        help="train the MTP drafter (NumPy, hand-written gradients) and save it",
        description="Teacher-forced passes of the model over offline text (Python's docs, "
        "docstrings, standard-library code, its own samples and greedy continuations), then Adam "
        "on the drafter unrolled over its draft steps, learning the model's own argmax; prints "
        "progress.",
    )
    t.add_argument("--out", default=str(_mtp_default()), help="where to write the weights")
    t.add_argument(
        "--data",
        metavar="FILE",
        help="prepared data (.npz): read if it exists, else made and written there",
    )
    r = Recipe()  # the defaults: the shipped drafter's recipe
    for flag, value, what in [
        ("--positions", r.positions, "positions to prepare ({})"),
        ("--length", r.length, "tokens per document chunk ({})"),
        ("--own-tokens", r.own_tokens, "own samples to draw ({})"),
        ("--greedy-tokens", r.greedy_tokens, "new tokens per greedy continuation ({}; 0: none)"),
        ("--steps", r.adam_steps, "Adam steps ({})"),
        ("--batch", r.batch, "chunks per step ({})"),
        ("--unroll", r.draft_steps, "draft steps unrolled ({})"),
        ("--lr", r.lr, "peak learning rate ({})"),
        ("--width", r.width, "the drafter's width ({})"),
        ("--d-ff", r.d_ff, "its MLP width ({})"),
        ("--head-size", r.head_size, "tokens the head scores ({})"),
        ("--seed", r.seed, "random seed ({})"),
    ]:
        t.add_argument(flag, type=type(value), default=value, help=what.format(value))
    add_model_args(t)
    t.set_defaults(run=cmd_train_mtp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "temperature"):
            check_sampling(args.temperature, args.top_k, args.top_p)
        if hasattr(args, "prompt"):
            check_prompt_text(args.prompt)  # before the seconds of loading the model
        result = args.run(args)
    except (InputError, FileNotFoundError) as e:  # bad input; any other error is a bug: traceback
        print(f"minispec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result is not None:
        print(json.dumps(result, ensure_ascii=False))
    return 0
