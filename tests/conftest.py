"""Shared fixtures: the real sample archive, and read-only storage that refuses writes even to root."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest-xdist worker per core: a torch/faiss/BLAS thread pool per worker (and per command a test starts)
    # would fight for the other worker's core: the suite took 372 s instead of 330 s (docs/benchmarks.md).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def archive_problem(value: str | None) -> str | None:
    """Why RETRIEVAL_SAMPLE_ARCHIVE cannot be used (None when it can)."""
    if not value:
        return "RETRIEVAL_SAMPLE_ARCHIVE is not set"
    if not (Path(value) / "manifest.csv").is_file():
        return f"RETRIEVAL_SAMPLE_ARCHIVE={value} has no manifest.csv"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI a set but unusable RETRIEVAL_SAMPLE_ARCHIVE fails the run: the archive tests must not vanish as skips."""
    value = os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE")
    problem = archive_problem(value)
    if value and problem and os.environ.get("CI", "").lower() in ("true", "1"):
        raise pytest.UsageError(f"{problem}: in CI (CI={os.environ['CI']}) the archive tests would all be skipped")


@pytest.fixture(scope="session")
def archive() -> Path:
    """Path of the real CT/MR sample archive; tests using it skip without RETRIEVAL_SAMPLE_ARCHIVE (and fail the run in CI when it is wrong)."""
    value = os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE")
    problem = archive_problem(value)
    if problem:
        pytest.skip(problem)
    return Path(value).resolve()  # type: ignore[arg-type]


def _run(*command: str | Path) -> bool:
    """Run a command quietly; True when it succeeded."""
    return subprocess.run([str(c) for c in command], capture_output=True).returncode == 0


@pytest.fixture()
def read_only_copy(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Copy a folder onto storage that refuses every write, root's included: a read-only bind mount, else chattr +i."""
    undo: list[tuple[str | Path, ...]] = []

    def make(folder: Path) -> Path:
        copy = Path(shutil.copytree(folder, tmp_path / f"copy-{len(undo)}"))
        mounted = tmp_path / f"read-only-{len(undo)}"
        mounted.mkdir()
        if _run("mount", "--bind", copy, mounted):
            undo.append(("umount", mounted))
            if not _run("mount", "-o", "remount,bind,ro", mounted):
                pytest.skip("cannot remount a bind mount read-only here")
        elif _run("chattr", "-R", "+i", copy):
            undo.append(("chattr", "-R", "-i", copy))
            mounted = copy
        else:
            pytest.skip("no read-only storage to test on (neither `mount --bind` nor `chattr +i` works here)")
        try:
            (mounted / "probe").write_text("x")
        except OSError:
            return mounted
        pytest.fail(f"{mounted}: writable although it was made read-only")

    yield make
    for command in reversed(undo):
        _run(*command)
