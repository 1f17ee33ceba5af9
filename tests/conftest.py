"""Session fixtures shared by the test files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The packaged Gemma 3 270M as a Hugging Face folder, converted at most once per test run.

    Converts into a temporary cache for the session, unless MINISPEC_CACHE is already set: then
    that cache is used (and kept between runs). The variable stays set for the rest of the session,
    so code under test that calls `default_checkpoint()` finds the same folder.
    """
    from minispec.cache import default_checkpoint

    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("MINISPEC_CACHE"):
            mp.setenv("MINISPEC_CACHE", str(tmp_path_factory.mktemp("minispec-cache")))
        yield default_checkpoint()
