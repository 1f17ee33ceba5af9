"""Chains against token trees on held-out prompts: tau and tokens/s, per drafter and prompt.

    python docs/probes/tree_held_out.py [RUNS] [DRAFTERS] [--sampled]

`bench.tree_sweep` (what `minispec bench --trees` runs on the benchmark's two prompts) on nine
held-out prompts of `minispec.measure` (EVAL_PROMPTS and six of MORE_PROMPTS: stories,
letters, an article, code; none in the MTP drafter's training text): chains of k = 1..4 and
trees of 4, 8, 12 and 16 nodes, 64 new tokens, RUNS rounds (default 1: greedy tau counts
tokens, so one run gives it exactly). DRAFTERS: comma-separated (default mtp,early-exit).
`--sampled`: temperature 0.7, top-p 0.95, the prose and letter prompts only, trees up to 12.
Prints one JSON object: the machine's load before and after, and the sweep's rows. Not a test:
it asserts nothing.
"""

from __future__ import annotations

import json
import sys

from minispec import bench, roofline
from minispec.loading import load_model
from minispec.measure import EVAL_PROMPTS, MORE_PROMPTS
from minispec.sampling import GREEDY, SamplingParams

HELD_OUT = ["prose", "letter", "code", "harbour", "order", "bees", "merge", "henry", "museum"]


def main(runs: int, drafters: list[str], sampled: bool) -> None:
    model = load_model()
    every = {**EVAL_PROMPTS, **MORE_PROMPTS}
    names = ["prose", "letter"] if sampled else HELD_OUT
    sampling = SamplingParams(temperature=0.7, top_p=0.95) if sampled else GREEDY
    trees = (4, 8, 12) if sampled else bench.TREE_SIZES
    load = roofline.machine_load()
    rows = bench.tree_sweep(
        model, drafters, trees=trees, new_tokens=64, prompts={n: every[n] for n in names},
        runs=runs, sampling=sampling,
    )  # fmt: skip
    print(json.dumps({"load": load, "load_after": roofline.machine_load(), "rows": rows}))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--sampled"]
    main(
        int(args[0]) if args else 1,
        args[1].split(",") if len(args) > 1 else ["mtp", "early-exit"],
        "--sampled" in sys.argv,
    )
