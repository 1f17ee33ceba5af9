"""Measuring speculative decoding: the prompts it is measured on, what its speedup is, and the
drafters compared on held-out prompts.

- PROMPTS: the benchmark's two prompts (`minispec bench`, the app's prose preset, lesson 5);
  EVAL_PROMPTS and MORE_PROMPTS: held-out prompts, in no training text of the MTP drafter.
- `speedup`: the one definition of a speedup, the median over rounds of paired ratios

      S = median_i ( tokens/s of run i / tokens/s of baseline run i ),

  each run timed right after (or right before) its baseline: the machine's speed can drift by a
  third within minutes (other guests' memory traffic), and a ratio of medians of runs minutes
  apart would carry that drift into S; within a pair it cancels.
- `compare_drafters`: greedy speculative decoding with each drafter: the acceptance at each
  draft position, tokens per target forward (tau), the drafter's cost c per draft step as a
  fraction of one target forward (both timed in the same run), and the speedup over plain
  decoding. `curve_png` draws a training run's held-out curve.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from minispec.drafters import make_drafter
from minispec.generate import Generation, generate
from minispec.model import Model
from minispec.speculative import speculative_generate
from minispec.tokenizer import encode

# Two prompts with opposite characters: the code-editing one repeats a block with changes
# (prompt lookup finds long matches), the prose one does not.
PROMPTS = {
    "code-edit": '''def mean(values):
    """Return the arithmetic mean of a list of numbers."""
    if not values:
        raise ValueError("mean() of an empty list")
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


# The same function, renamed to average and with a docstring that mentions floats:
def average(values):
    """Return the arithmetic mean of a list of floats."""
    if not values:
        raise ValueError("average() of an empty list")
''',
    "prose": (
        "The lighthouse keeper had lived alone on the island for eleven years. Every evening "
        "he climbed the spiral stairs, trimmed the wick and watched the ships pass far out at "
        "sea. One winter night, a small boat appeared"
    ),
}

# Held out: none of these texts, nor their themes, is among the training documents.
EVAL_PROMPTS = {
    "prose": PROMPTS["prose"],
    "letter": (
        "Dear Aunt Clara,\n\nI hope this letter finds you well. The summer here has been "
        "long and hot, and the garden you planted with us"
    ),
    "code": (
        'def binary_search(items, target):\n    """Return the index of target in the '
        'sorted list items, or -1."""\n    lo, hi = 0, len(items) - 1\n'
    ),
}


# Twelve more held-out prompts (stories, letters, an article, code), in no training text either:
# one 64-token prompt drafts only about 40 times, so a drafter's tau on it moves by 0.1 or more
# between training runs of equal skill; these pool more positions (docs/probes/mtp_held_out.py;
# compare_drafters(model, specs, prompts={**EVAL_PROMPTS, **MORE_PROMPTS})).
MORE_PROMPTS = {
    "harbour": "The morning fog lay thick over the harbour when Elena stepped off the ferry. "
    "She had not been back to",
    "order": "Dear Mr. Patel,\n\nThank you for your order of last week. Unfortunately,",
    "committee": "The committee met on Tuesday to discuss the new library budget. After a long "
    "debate,",
    "bees": "When I was a boy, my father kept bees behind the barn. Every spring",
    "trip": "Hello Sarah,\n\nI wanted to follow up on our conversation about the trip to",
    "mountain": "The mountain road wound upward through the pines, and the car",
    "photosynthesis": "Photosynthesis is the process by which plants",
    "baker": "The village baker rose every day at four. Before anyone else was awake,",
    "merge": 'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n'
    "    result = []\n",
    "counter": 'class Counter:\n    """Count how often each item appears."""\n\n'
    "    def __init__(self):\n",
    "henry": "My dearest Henry,\n\nIt has been three weeks since you left, and the house",
    "museum": "The museum's new exhibition opens on Friday. Visitors will",
}


def speedup(runs: Sequence[Generation], baselines: Sequence[Generation]) -> float:
    """S = median_i (tokens/s of runs[i] / tokens/s of baselines[i]): the median over rounds of
    each run's speed over its paired baseline's (see the module's docstring for why paired).

    runs and baselines: one `Generation` (or `SpeculativeGeneration`) per round, in the same
    order; tokens/s is `Generation.tokens_per_s`, the decode speed with the prefill excluded.
    """
    if len(runs) != len(baselines) or not runs:
        raise ValueError(
            f"speedup: needs one baseline per run and at least one pair, got {len(runs)} runs "
            f"and {len(baselines)} baselines"
        )
    return statistics.median(paired_ratios(runs, baselines))


def paired_ratios(runs: Sequence[Generation], baselines: Sequence[Generation]) -> list[float]:
    """Each round's speed over its own baseline's: what `speedup` takes the median of, and
    whose spread says what a difference of a few percent is worth on this machine."""
    return [r.tokens_per_s / b.tokens_per_s for r, b in zip(runs, baselines, strict=True)]


def compare_drafters(
    model: Model,
    specs: list[str],
    k: int = 3,
    new_tokens: int = 64,
    runs: int = 1,
    prompts: dict[str, str] | None = None,
) -> list[dict]:
    """One row per (prompt, drafter): acceptance by position, tau, c, tokens/s, speedup.

    Each speculative run is paired with a plain run just before it, and `speedup` is
    `speedup(speculative runs, plain runs)`, the median of their ratios. tokens_per_s and
    plain_tokens_per_s are the medians of the drafter's own speculative and plain runs.
    """
    drafters = {spec: make_drafter(spec, model) for spec in specs}
    rows = []
    for name, text in (prompts or EVAL_PROMPTS).items():
        ids = encode(model.tokenizer, text)
        for spec, drafter in drafters.items():
            plain, outs = [], []
            for _ in range(runs):
                plain.append(generate(model, ids, new_tokens, stop_at_eos=False))
                outs.append(
                    speculative_generate(
                        model, ids, drafter, k, new_tokens, stop_at_eos=False, trace=False
                    )
                )
            s = outs[0].stats
            drafted = max(1, s.drafted)
            # c: one draft step's time over one verify pass's (each verify is one forward)
            cost = (s.draft_s / drafted) / (s.verify_s / max(1, s.steps))
            rows.append(
                {
                    "prompt": name,
                    "drafter": spec,
                    "k": k,
                    "acceptance_by_position": s.acceptance_by_position,
                    "alpha": s.alpha,
                    "tau": s.tau,
                    "c": cost,
                    "tokens_per_s": statistics.median(o.tokens_per_s for o in outs),
                    "plain_tokens_per_s": statistics.median(g.tokens_per_s for g in plain),
                    "speedup": speedup(outs, plain),
                    "same_as_plain": all(o.ids == g.ids for o, g in zip(outs, plain, strict=True)),
                }
            )
    return rows


def curve_png(report: dict, path: str, size: tuple[int, int] = (720, 420)) -> None:
    """Held-out top-1 agreement per draft position against training step, as a PNG (Pillow)."""
    from PIL import Image, ImageDraw

    points = [p for p in report["curve"] if "held_out" in p]
    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    last = max(1, points[-1]["step"])
    ymax = max(0.05, max(max(p["held_out"]["top1"]) for p in points)) * 1.15

    def xy(step: float, y: float) -> tuple[float, float]:
        return (left + (w - left - right) * step / last, h - bottom - (h - top - bottom) * y / ymax)

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    n = len(points[0]["held_out"]["top1"])
    for j in range(n):
        line = [xy(p["step"], p["held_out"]["top1"][j]) for p in points]
        d.line(line, fill=colors[j % 4], width=3)
        d.text((w - right - 150, top + 8 + 14 * j), f"draft position {j + 1}", fill=colors[j % 4])
    for i in range(5):
        y = ymax * i / 5
        d.text((8, xy(0, y)[1] - 6), f"{y:.2f}", fill="black")
    d.text((left, h - bottom + 8), "0", fill="black")
    d.text((w - right - 40, h - bottom + 8), f"{last}", fill="black")
    d.text((w // 2 - 80, h - bottom + 24), "training step (Adam)", fill="black")
    d.text((left, 8), "held-out top-1 agreement with the target's argmax", fill="black")
    img.save(path)
