"""Batch invariance: a position's logits do not depend on how many positions share the forward.

Verifying k drafts is one forward of k+1 tokens; plain decoding is k+1 forwards of one token.
If the two gave different bits, greedy speculative decoding could pick a different token where
the top two logits nearly tie. With the streaming kernels (one fixed summation order per output)
and attention computed one query at a time, they are bit-identical (np.array_equal), for a
verify pass and for a whole prompt alike. The same holds across sequences: `forward_each`
decodes B sequences in one pass, and row b is what sequence b alone would have given.
"""

import numpy as np
import pytest

from minispec.generate import generate, generate_batch
from minispec.kv_cache import new_cache
from minispec.model import forward, forward_each
from minispec.sampling import SamplingParams
from minispec.tiny import tiny_model


def one_forward_and_one_by_one(model, context, new):
    together = new_cache(model.config)
    forward(model, context, together)
    rows = forward(model, new, together)  # (T, vocab) in one pass
    alone = new_cache(model.config)
    forward(model, context, alone)
    singles = np.concatenate([forward(model, [t], alone) for t in new])  # T passes of one
    return rows, singles, together, alone


@pytest.mark.parametrize("weights", ["float32", "int8"])
@pytest.mark.parametrize("T", [1, 2, 5, 9, 16, 17, 60])  # 60: a prompt, two row blocks
def test_tiny_model_is_batch_invariant(weights, T):
    model = tiny_model(seed=3, weights=weights)
    rng = np.random.default_rng(T)
    context, new = rng.integers(4, 260, 20).tolist(), rng.integers(4, 260, T).tolist()
    rows, singles, a, b = one_forward_and_one_by_one(model, context, new)
    assert np.array_equal(rows, singles)
    assert np.array_equal(a.keys[:, : a.length], b.keys[:, : b.length])


@pytest.fixture(scope="module")
def real_model(real_checkpoint):
    from minispec.loading import load_model

    return load_model(real_checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("T", [2, 5, 17, 60])  # 60: a prompt's worth, two row blocks
def test_real_model_is_batch_invariant(real_model, T):
    model = real_model
    rng = np.random.default_rng(T)
    context = rng.integers(4, model.config.vocab_size, 300).tolist()
    new = rng.integers(4, model.config.vocab_size, T).tolist()
    rows, singles, _, _ = one_forward_and_one_by_one(model, context, new)
    assert np.array_equal(rows, singles)


# --------------------------------------------- several sequences in one pass (`forward_each`)


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_forward_each_row_is_that_sequence_decoded_alone(weights):
    """Row b of one pass over B sequences is bit for bit sequence b's own one-token forward."""
    model = tiny_model(seed=3, weights=weights)
    rng = np.random.default_rng(0)
    contexts = [rng.integers(4, 260, n).tolist() for n in (3, 11, 20)]  # 11, 20: past the window
    batched, alone = [new_cache(model.config) for _ in contexts], []
    for context, cache in zip(contexts, batched, strict=True):
        forward(model, context, cache)
    new = rng.integers(4, 260, len(contexts)).tolist()
    rows = forward_each(model, new, batched)  # (3, vocab)
    for b, context in enumerate(contexts):
        alone.append(new_cache(model.config))
        forward(model, context, alone[b])
        assert np.array_equal(rows[b], forward(model, [new[b]], alone[b])[0])
        assert batched[b].length == len(context) + 1
        assert np.array_equal(
            batched[b].keys[:, : batched[b].length], alone[b].keys[:, : alone[b].length]
        )


def test_forward_each_wants_one_token_per_cache():
    model = tiny_model(seed=3)
    caches = [new_cache(model.config) for _ in range(2)]
    with pytest.raises(ValueError, match="3 tokens for 2 caches"):
        forward_each(model, [5, 6, 7], caches)


@pytest.mark.parametrize("weights", ["float32", "int8"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_batch_equals_generate_one_by_one(weights, temperature):
    """Each result is what `generate` gives that prompt with that seed, <eos> stops included."""
    model = tiny_model(seed=0, weights=weights)
    texts = ["hello hello hello world", "a", "the quick brown fox jumps", "abc abc abc"]
    prompts = [model.tokenizer.encode(t).ids for t in texts]  # as test_speculative's
    sampling, seeds = SamplingParams(temperature=temperature), [7, 0, 3, 12]
    steps: list[int] = []
    got = generate_batch(model, prompts, 40, sampling, seeds, on_step=steps.append)
    for prompt, seed, out in zip(prompts, seeds, got, strict=True):
        want = generate(model, prompt, 40, sampling, seed)
        assert (out.ids, out.stopped_by, out.text) == (want.ids, want.stopped_by, want.text)
    assert steps[-1] == sum(len(g.ids) for g in got) and len(steps) == max(len(g.ids) for g in got)
    # Some rows stop at <eos> while others go on (in every case here): the batch shrinks.
    assert {g.stopped_by for g in got} == {"eos", "max_new_tokens"}


def test_generate_batch_wants_one_seed_per_prompt():
    model = tiny_model(seed=0)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        generate_batch(model, [[2, 5], [2, 6]], 4, seeds=[0])


@pytest.mark.slow
def test_real_generate_batch_equals_generate(real_checkpoint):
    """Gemma 3 270M, int8 (as train-mtp's own samples): sampled batch rows are `generate`'s."""
    from minispec.loading import load_model
    from minispec.tokenizer import encode

    model = load_model(real_checkpoint, weights="int8")
    texts = ["The history of the printing press", "def fibonacci(n):", "Dear team,"]
    prompts = [encode(model.tokenizer, t) for t in texts]
    sampling, seeds = SamplingParams(temperature=1.0), [0, 1, 2]
    got = generate_batch(model, prompts, 24, sampling, seeds)
    for prompt, seed, out in zip(prompts, seeds, got, strict=True):
        assert out.ids == generate(model, prompt, 24, sampling, seed).ids
