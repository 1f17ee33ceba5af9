"""Gemma 3's tokenizer: text to token ids and back.

Gemma uses a SentencePiece model of type BPE with byte fallback. The GGUF file carries it as three
parallel arrays: `tokenizer.ggml.tokens` (the 262,144 pieces), `.scores` (one float per piece) and
`.token_type`. Here we turn those arrays into a Hugging Face `tokenizers.Tokenizer`, which is fast
(Rust) and can be saved as the `tokenizer.json` that transformers reads too.

How SentencePiece-BPE tokenizes a text, and how each step maps onto `tokenizers`:

1. Normalize: every space becomes "▁" (U+2581), so a word keeps its leading space inside its
   piece ("▁the"). Gemma adds no dummy prefix: "the" at the very start stays "the".
   -> normalizer Replace(" ", "▁").
2. User-defined pieces (type 4: runs of 2-31 spaces, 1-31 tabs or newlines, HTML tags such as
   `<table>` or `<h1>`) are cut out first, whole, the longest one that matches at each position.
   They never take part in merges, so 32 spaces become 31 + 1 and 40 spaces 31 + 9. A tokenizer
   that lets merges build the runs (transformers' own GGUF conversion does) gives 16 + 16
   instead: other ids than the model was trained on. -> added tokens matched on the normalized
   text (the library's matcher is leftmost-longest, as SentencePiece's is).
3. Everything else starts as single characters and is merged pairwise: at each step the adjacent
   pair whose concatenation is the piece with the highest score is merged (the leftmost on a tie),
   until no adjacent pair forms a piece. -> BPE whose merge list is ranked by the merged piece's
   score, best first: this greedy loop is exactly what BPE with ranked merges runs.
4. A character that is not a piece at all (a rare CJK character, an unusual emoji) falls back to
   its UTF-8 bytes, one `<0xNN>` piece per byte. -> BPE(byte_fallback=True).
5. `<bos>` (id 2) goes in front: the model was trained with it at position 0.
   -> a TemplateProcessing post-processor.

Decoding runs it backwards: "▁" -> " ", consecutive `<0xNN>` bytes -> their UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from minispec.errors import InputError

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

# llama.cpp's token types, as stored in `tokenizer.ggml.token_type` (SentencePiece's, plus one).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE = "▁"  # U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's visible space


def read_gguf_vocab(reader: gguf.GGUFReader) -> tuple[list[str], list[float], list[int]]:
    """The pieces, their scores and their types, as stored in a GGUF file's metadata."""
    fields = reader.fields
    try:
        pieces = fields["tokenizer.ggml.tokens"].contents()
        scores = fields["tokenizer.ggml.scores"].contents()
        types = fields["tokenizer.ggml.token_type"].contents()
    except KeyError as err:
        raise InputError(f"this GGUF file has no tokenizer metadata: {err} is missing") from err
    model = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
    if model != "llama":
        raise InputError(f"expected a SentencePiece ('llama') GGUF tokenizer, found {model!r}")
    return pieces, scores, types


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> Tokenizer:
    """Build Gemma's tokenizer from an open GGUF file (takes a few seconds for 262,144 pieces)."""
    return tokenizer_from_sentencepiece(*read_gguf_vocab(reader))


def tokenizer_from_sentencepiece(
    pieces: list[str], scores: list[float], types: list[int]
) -> Tokenizer:
    """Build the tokenizer from SentencePiece's three arrays (steps 1-5 of the module docstring)."""
    keys = [_vocab_key(piece, kind) for piece, kind in zip(pieces, types, strict=True)]
    bpe = models.BPE(
        vocab={key: i for i, key in enumerate(keys)},
        merges=sentencepiece_merges(pieces, scores, types),
        unk_token=pieces[UNK_ID],
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(bpe)  # no pre-tokenizer: SentencePiece does not split the text into words
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    bos = pieces[BOS_ID]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, BOS_ID)]
    )
    _add_whole_pieces(tok, keys, types)
    return tok


def _vocab_key(piece: str, kind: int) -> str:
    """The GGUF stores user-defined runs of spaces as real spaces; in the vocab they are "▁"s."""
    return piece.replace(" ", SPACE) if kind == USER_DEFINED else piece


def sentencepiece_merges(
    pieces: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """Every merge left + right -> piece that SentencePiece-BPE can make, best first.

    A merge is possible when a normal piece splits into two normal pieces; SentencePiece picks
    the pair whose merged piece scores highest, so that score is the merge's rank. One piece
    can often be built from several splits ("▁the" = "▁th" + "e" = "▁t" + "he"); they share
    the score, and we list the longer left part first, as Gemma's official tokenizer.json does.
    Control, user-defined and byte pieces never come out of a merge.
    """
    normal = {piece for piece, kind in zip(pieces, types, strict=True) if kind == NORMAL}
    ranked = []
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        if kind != NORMAL:
            continue
        for cut in range(len(piece) - 1, 0, -1):  # longer left part first
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((score, left, right))
    ranked.sort(key=lambda merge: -merge[0])  # best first; a stable sort keeps ties in order
    return [(left, right) for _, left, right in ranked]


def _add_whole_pieces(tok: Tokenizer, keys: list[str], types: list[int]) -> None:
    """Control pieces become special tokens, user-defined pieces tokens matched before BPE.

    A control piece (`<bos>`, `<eos>`, `<pad>`, `<unused0>`...) is matched in the raw text, as
    Gemma's official tokenizer does, and dropped by `decode(..., skip_special=True)`.
    A user-defined piece is matched on the normalized text (spaces already "▁"), as
    SentencePiece does, so both "  " and "▁▁" in the input become the 2-space piece.
    """
    control = [key for key, kind in zip(keys, types, strict=True) if kind == CONTROL]
    user = [key for key, kind in zip(keys, types, strict=True) if kind == USER_DEFINED]
    tok.add_special_tokens([AddedToken(key, normalized=False, special=True) for key in control])
    tok.add_tokens([AddedToken(key, normalized=True, special=False) for key in user])


def tokenizer_config(tok: Tokenizer, model_max_length: int = 32_768) -> dict:
    """The `tokenizer_config.json` that lets transformers' AutoTokenizer use our tokenizer.json.

    It names the special tokens (the base Gemma 3 ends a text with `<eos>`, id 1) and says
    that <bos> is added and <eos> is not.
    """
    return {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": tok.id_to_token(BOS_ID),
        "eos_token": tok.id_to_token(EOS_ID),
        "pad_token": tok.id_to_token(PAD_ID),
        "unk_token": tok.id_to_token(UNK_ID),
        "model_max_length": model_max_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
    }


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a `tokenizer.json`: the file itself, or a folder that holds one."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"no tokenizer file at {file}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # the library raises a bare Exception on bad JSON
        raise InputError(f"{file} is not a valid tokenizer.json: {err}") from err


def encode(tok: Tokenizer, text: str, add_bos: bool = True) -> list[int]:
    """Token ids of `text`, with <bos> (id 2) in front unless add_bos is False.

    As with Gemma's official tokenizer, a control piece written in the text ("<eos>",
    "<start_of_turn>") becomes that control token, not the characters "<", "eos", ">".
    """
    return tok.encode(text, add_special_tokens=add_bos).ids


def decode(tok: Tokenizer, ids: Iterable[int], skip_special: bool = True) -> str:
    """The text of `ids`; control tokens such as <bos> and <eos> are left out by default."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


def token_strings(tok: Tokenizer, ids: Iterable[int]) -> list[str]:
    """The piece behind each id, as the model sees it: "▁the", "<0xF0>", "<bos>"."""
    strings = []
    for i in ids:
        piece = tok.id_to_token(int(i))
        if piece is None:
            raise InputError(f"token id {i} is not in the vocabulary ({tok.get_vocab_size()} ids)")
        strings.append(piece)
    return strings
