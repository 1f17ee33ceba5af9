"""Plain autoregressive decoding: the baseline speculative decoding must reproduce and beat.

Prefill runs the whole prompt through the model once (filling the KV cache); then each step
feeds the one newest token and draws the next from the last row of logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minispec.errors import InputError
from minispec.kv_cache import new_cache
from minispec.model import Model, forward, forward_each
from minispec.sampling import GREEDY, SamplingParams, distribution, sample


@dataclass
class Generation:
    prompt_ids: list[int]
    ids: list[int]  # the new tokens only
    text: str  # the new tokens, decoded
    prefill_s: float
    decode_s: float
    stopped_by: str  # "eos" or "max_new_tokens"

    @property
    def tokens_per_s(self) -> float:
        """Decode speed, prefill excluded: tokens after the first, per second of decoding."""
        n = len(self.ids) - 1  # the first token comes out of the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def check_prompt(prompt_ids: list[int], vocab_size: int) -> None:
    if len(prompt_ids) == 0:
        raise InputError("the prompt is empty: give at least one token (or some text)")
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def generate(
    model: Model,
    prompt_ids: list[int],
    max_new_tokens: int = 32,
    sampling: SamplingParams = GREEDY,
    seed: int = 0,
    on_token: Callable[[int], None] | None = None,
    stop_at_eos: bool = True,
) -> Generation:
    """Greedy or sampled decoding, stopping at EOS or after max_new_tokens new tokens."""
    check_prompt(prompt_ids, model.config.vocab_size)
    check_max_new_tokens(max_new_tokens)
    rng = np.random.default_rng(seed)
    cache = new_cache(model.config, capacity=len(prompt_ids) + max_new_tokens)

    t0 = time.perf_counter()
    logits = forward(model, prompt_ids, cache, last_only=True)[-1]
    prefill_s = time.perf_counter() - t0

    ids: list[int] = []
    stopped_by = "max_new_tokens"
    t0 = time.perf_counter()
    while True:
        token = next_token(logits, sampling, rng)
        ids.append(token)
        if on_token is not None:
            on_token(token)
        if stop_at_eos and token == model.config.eos_token_id:
            stopped_by = "eos"
            break
        if len(ids) == max_new_tokens:
            break
        logits = forward(model, [token], cache)[-1]
    decode_s = time.perf_counter() - t0
    return Generation(
        prompt_ids=list(prompt_ids),
        ids=ids,
        text=decode_text(model, ids),
        prefill_s=prefill_s,
        decode_s=decode_s,
        stopped_by=stopped_by,
    )


def generate_batch(
    model: Model,
    prompts: list[list[int]],
    max_new_tokens: int = 32,
    sampling: SamplingParams = GREEDY,
    seeds: list[int] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[Generation]:
    """`generate` for several prompts at once: each step is one pass over all unfinished ones.

    Each prompt is prefilled alone, then every decoding step feeds the newest token of every
    sequence still running in one `forward_each` (the weights are read once per step, not once
    per sequence). Sequence b draws from its own generator, seeded with seeds[b] (default b), so
    with the kernels each result is token for token `generate(model, prompts[b], ..., seeds[b])`.
    prefill_s and decode_s are the wall times of all the prefills and of the shared loop;
    on_step(n) gets the number of tokens made so far, after every step.
    """
    check_max_new_tokens(max_new_tokens)
    for prompt in prompts:
        check_prompt(prompt, model.config.vocab_size)
    seeds = list(range(len(prompts))) if seeds is None else seeds
    if len(seeds) != len(prompts):
        raise InputError(f"generate_batch: {len(prompts)} prompts but {len(seeds)} seeds")
    rngs = [np.random.default_rng(s) for s in seeds]
    caches = [new_cache(model.config, capacity=len(p) + max_new_tokens) for p in prompts]

    t0 = time.perf_counter()
    logits = [
        forward(model, p, c, last_only=True)[-1] for p, c in zip(prompts, caches, strict=True)
    ]
    prefill_s = time.perf_counter() - t0

    ids: list[list[int]] = [[] for _ in prompts]
    stopped_by = ["max_new_tokens"] * len(prompts)
    running = list(range(len(prompts)))
    t0 = time.perf_counter()
    while running:
        for row, b in enumerate(running):
            ids[b].append(next_token(logits[row], sampling, rngs[b]))
            if ids[b][-1] == model.config.eos_token_id:
                stopped_by[b] = "eos"
        running = [b for b in running if stopped_by[b] != "eos" and len(ids[b]) < max_new_tokens]
        if on_step is not None:
            on_step(sum(map(len, ids)))
        if running:
            step = forward_each(model, [ids[b][-1] for b in running], [caches[b] for b in running])
            logits = list(step)  # (len(running), vocab): row i is sequence running[i]'s
    decode_s = time.perf_counter() - t0
    return [
        Generation(list(p), ids[b], decode_text(model, ids[b]), prefill_s, decode_s, stopped_by[b])
        for b, p in enumerate(prompts)
    ]


def next_token(logits: np.ndarray, sampling: SamplingParams, rng: np.random.Generator) -> int:
    """The argmax when greedy (no need to build a one-hot over the vocabulary), else a sample."""
    if sampling.greedy:
        return int(np.argmax(logits))
    return sample(distribution(logits, sampling), rng)


def decode_text(model: Model, ids: list[int]) -> str:
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return model.tokenizer.decode(ids, skip_special_tokens=True)
