"""Shared fixtures: the real sample archive (skipped when RETRIEVAL_SAMPLE_ARCHIVE is unset)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def archive() -> Path:
    """Path of the real CT/MR sample archive; tests using it skip without RETRIEVAL_SAMPLE_ARCHIVE."""
    value = os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE")
    if not value:
        pytest.skip("RETRIEVAL_SAMPLE_ARCHIVE is not set")
    path = Path(value).resolve()
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"RETRIEVAL_SAMPLE_ARCHIVE={value} has no manifest.csv")
    return path
