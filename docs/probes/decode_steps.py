"""Six plain greedy decodings of 48 tokens after a 256-token prompt, timed step by step.

Shows whether a run's tokens/s comes from steady steps or from a few stalls.
"""

import time

import numpy as np

from minispec.generate import generate
from minispec.loading import load_model


def step_times(stamps: list[float]):
    """An on_token callback that appends the time of each token to stamps."""
    return lambda token: stamps.append(time.perf_counter())


model = load_model(None)
prompt = np.random.default_rng(1).integers(4, model.config.vocab_size, 256).tolist()
for _ in range(6):
    stamps: list[float] = []
    run = generate(model, prompt, 48, stop_at_eos=False, on_token=step_times(stamps))
    ms = 1000 * np.diff(stamps)  # between tokens: one decoding step each
    print(
        f"{run.tokens_per_s:.1f} tokens/s: steps median {np.median(ms):.0f} ms, "
        f"max {ms.max():.0f} ms, {(ms > 100).sum()} over 100 ms"
    )
