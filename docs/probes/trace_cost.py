"""What recording the app's trace costs, in-process: the app's defaults with and without it.

    python docs/probes/trace_cost.py [ROUNDS]

The benchmark's code-edit prompt, the ngram drafter, k = 4, 24 new tokens, temperature 0.7,
top-p 0.95, seed 0 (the app's settings): per round, `speculative_generate` without the trace,
with it as the app records it (`trace=True, trace_top=6`), and plain decoding, alternating.
Prints the medians of the rounds and every run, tokens/s, and the share of the traced runs'
decoding time spent writing the records (`Stats.trace_s`, timed inside the run, so the
machine's minute-to-minute spread does not blur it). Not a test: it asserts nothing.
"""

from __future__ import annotations

import statistics
import sys

import minispec as ms
from minispec.measure import PROMPTS
from minispec.sampling import SamplingParams


def main(rounds: int) -> None:
    model = ms.load_model()
    ids = ms.encode(model.tokenizer, PROMPTS["code-edit"])
    drafter = ms.make_drafter("ngram", model)
    sampling = SamplingParams(temperature=0.7, top_p=0.95)
    runs: dict[str, list[float]] = {"no trace": [], "trace, top 6": [], "plain": []}
    shares: list[float] = []
    for _ in range(rounds):
        for mode, speeds in runs.items():
            if mode == "plain":
                g = ms.generate(model, ids, 24, sampling=sampling, seed=0)
                speeds.append(g.tokens_per_s)
                continue
            traced = {"trace": True, "trace_top": 6} if mode == "trace, top 6" else {"trace": False}
            run = ms.speculative_generate(
                model, ids, drafter, k=4, max_new_tokens=24, sampling=sampling, seed=0, **traced
            )
            speeds.append(run.stats.tokens_per_s)
            if run.trace is not None:
                shares.append(run.stats.trace_s / run.stats.decode_s)
    for mode, speeds in runs.items():
        every = ", ".join(f"{v:.0f}" for v in speeds)
        print(f"{mode:>13}: median {statistics.median(speeds):.1f} tokens/s ({every})")
    print(f"writing the records: median {statistics.median(shares):.1%} of a traced run's decoding")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
