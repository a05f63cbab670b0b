"""Fixtures for the server tests: a small real index (archive slices, shipped checkpoint) and a token file."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import SUBSET, TOKEN, identity, link


@pytest.fixture(scope="session")
def served_index(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of SUBSET built with the shipped checkpoint."""
    from indexer.pipeline import build_index

    root = tmp_path_factory.mktemp("served")
    build_index([link(archive, root / "archive", SUBSET)], root / "idx", identity(archive), workers=0, show_progress=False)
    return root / "idx"


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token file in a folder of its own (the pseudonymisation key goes beside it)."""
    path = tmp_path_factory.mktemp("secrets") / "token"
    path.write_text(TOKEN + "\n")
    return path
