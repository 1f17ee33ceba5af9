"""How the MTP drafter is made: its data, its sizes and its training, in one dataclass.

The defaults are the recipe of the drafter that ships for Gemma 3 270M (`minispec train-mtp`
with no options makes it again; the shipped weights record this recipe in their metadata).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Every setting of one training run of the MTP drafter."""

    # The data (`mtp_data.make_data`): teacher-forced chunks of offline text.
    positions: int = 210_000  # tokens to prepare, over all chunks
    length: int = 512  # tokens per chunk, <bos> included
    held_out_fraction: float = 0.08  # share of the documents kept for the held-out figures
    own_tokens: int = 9_000  # the target's own sampled continuations to draw
    greedy_tokens: int = 80  # new tokens per greedy continuation of those samples (0: none)
    # The drafter's sizes (`drafters.mtp.config_for`).
    width: int = 384  # d, its own width
    d_ff: int = 1024  # its MLP's hidden width
    head_size: int = 8_192  # |S|, the tokens its cheap head scores
    # The training (`mtp.train`).
    adam_steps: int = 300  # optimiser updates
    batch: int = 2  # chunks per update (each gives length - draft_steps positions)
    draft_steps: int = 3  # draft steps unrolled in the loss (backpropagation through time)
    lr: float = 2e-3  # peak learning rate
    warmup: int = 30  # updates of linear warm-up before the cosine decay
    seed: int = 0  # the data's own samples, the initial weights and the batches
    eval_every: int = 50  # updates between held-out evaluations
    eval_docs: int = 8  # held-out chunks scored at each evaluation


SHIPPED = Recipe()  # the drafter in minispec/drafters/ was made with exactly this
