"""Tokens per target forward (tau) of drafters in the engine, greedy, k = 3, on 15 held-out prompts.

`python docs/probes/mtp_engine_tau.py SPEC [SPEC ...]` (drafter specs as `--drafter` takes
them, e.g. `mtp` or `mtp:/tmp/mtp.safetensors`). Each prompt of `EVAL_PROMPTS` and
`MORE_PROMPTS` is decoded by 64 tokens with speculative decoding; tau depends only on the
tokens, not on the machine's speed, so one run per prompt is enough. Prints tau per prompt and
the mean.
"""

import sys

import numpy as np

import minispec as ms
from minispec.drafters import make_drafter
from minispec.measure import EVAL_PROMPTS, MORE_PROMPTS
from minispec.speculative import speculative_generate

model = ms.load_model()
prompts = {**EVAL_PROMPTS, **MORE_PROMPTS}
for spec in sys.argv[1:] or ["mtp"]:
    drafter = make_drafter(spec, model)
    taus = {}
    for name, text in prompts.items():
        ids = ms.encode(model.tokenizer, text)
        out = speculative_generate(model, ids, drafter, 3, 64, stop_at_eos=False, trace=False)
        taus[name] = out.stats.tau
    per_prompt = " ".join(f"{name} {tau:.2f}" for name, tau in taus.items())
    print(f"{spec}\n  {per_prompt}\n  mean {np.mean(list(taus.values())):.3f}", flush=True)
