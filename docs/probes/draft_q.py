"""A model drafter's sampled pick, `choose`, against `distribution` + `sample` over the full row.

`python docs/probes/draft_q.py`: rows of 262,144 logits in which a cheap head scored 8,192
(the MTP drafter's head) or 16,384 (early exit's) tokens and left the rest at -inf, and a row
with every token scored (the int8 copy's), at temperature 0.7 and top-p 0.95, the app's defaults.
Then `speculative_generate` with the MTP and early-exit drafters at those settings (k = 4, 24
tokens, the app's code prompt) beside plain decoding, tokens/s.
"""

import numpy as np
from timing import best_ms

import minispec as ms
from minispec.drafters.base import choose
from minispec.sampling import distribution, sample

rng = np.random.default_rng(0)
sampling = ms.SamplingParams(0.7, 0, 0.95)
for n_scored in (8192, 16384, 262144):
    logits = np.full(262144, -np.inf, np.float32)
    scored = rng.choice(262144, n_scored, replace=False)
    logits[scored] = 4 * rng.standard_normal(n_scored, dtype=np.float32)
    full = best_ms(lambda: sample(distribution(logits, sampling), rng))  # noqa: B023
    subset = best_ms(lambda: choose(logits, sampling, rng))  # noqa: B023
    print(f"{n_scored:7d} scored: full row {full:5.2f} ms, choose {subset:5.2f} ms")

model = ms.load_model()
code = 'def mean(values):\n    """Return the arithmetic mean of a list of numbers."""\n'
ids = ms.encode(model.tokenizer, code + "    total = 0.0\n    for value in values:\n")
for name in ("mtp", "early-exit"):
    drafter = ms.make_drafter(name, model)
    runs = [
        ms.speculative_generate(model, ids, drafter, k=4, max_new_tokens=24, sampling=sampling)
        for _ in range(3)
    ]
    print(f"{name}: {np.median([g.tokens_per_s for g in runs]):.1f} tokens/s")
plain = [ms.generate(model, ids, 24, sampling=sampling).tokens_per_s for _ in range(3)]
print(f"plain: {np.median(plain):.1f} tokens/s")
