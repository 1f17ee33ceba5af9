"""MTP drafters' agreement with Gemma 3 270M on the greedy continuations of 15 held-out prompts.

`python docs/probes/mtp_held_out.py [WEIGHTS ...]` (default: the shipped weights). The three
prompts of `minispec.measure.EVAL_PROMPTS` and its twelve `MORE_PROMPTS` (stories,
letters, an article, code), none in any training text, are continued greedily by 64 tokens;
one teacher-forced pass of each gives what a drafter reads, and each drafter is scored at every
continuation position as it would draft there: top-1 agreement with the target at draft
positions 1-3, and the chained estimate tau = 1 + P(1) + P(1, 2) + P(1, 2, 3) (k = 3), over all
15 and per prompt. One 64-token prompt in the engine drafts only about 40 times, so its tau
moves by 0.1 or more between two drafters of equal skill; this pools 930 positions.
"""

import sys

import numpy as np

import minispec as ms
from minispec.drafters.mtp import DEFAULT_WEIGHTS, config_for, load_mtp
from minispec.generate import generate_batch
from minispec.measure import EVAL_PROMPTS, MORE_PROMPTS
from minispec.train import mtp, mtp_data

model = ms.load_model()
prompts = [ms.encode(model.tokenizer, t) for t in {**EVAL_PROMPTS, **MORE_PROMPTS}.values()]
outs = generate_batch(model, prompts, 64)  # greedy, float32: what plain decoding gives
texts = [(np.array(p + o.ids, np.int64), len(p) - 1) for p, o in zip(prompts, outs, strict=True)]
layer = config_for(model).kv_layer  # the layer whose cache every MTP drafter here reads
passes = [mtp_data.teacher_forced(model, [ids], layer, say=lambda m: None) for ids, _ in texts]
for path in sys.argv[1:] or [str(DEFAULT_WEIGHTS)]:
    p, cfg, _ = load_mtp(path)
    frozen = mtp.frozen_parts(model, p.head_ids)
    right = []  # per prompt: (3, continuation positions) bool
    for (ids, start), arrays in zip(texts, passes, strict=True):
        data = mtp.TrainData(**arrays, held_out=np.array([True]), source=np.array(["eval"]))
        batch = data.batch(np.array([0]))
        _, _, pred = mtp.unrolled_loss(p, cfg, frozen, batch, 3, grads=False)
        T = ids.size - 3
        hit = [pred[j][0] == batch.labels[0, np.arange(T) + j + 1] for j in range(3)]
        right.append(np.stack(hit)[:, start:])

    def tau(r: np.ndarray) -> float:
        return 1 + float(np.cumprod(r, axis=0).mean(axis=1).sum())

    pooled = np.concatenate(right, axis=1)
    print(
        f"{path}\n  top-1 by draft position {' '.join(f'{a:.3f}' for a in pooled.mean(axis=1))}"
        f", tau (k = 3) {tau(pooled):.3f} over {pooled.shape[1]} positions\n"
        f"  per prompt: {' '.join(f'{tau(r):.2f}' for r in right)}"
    )
