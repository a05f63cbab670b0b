"""`retrieval index` on a subset of the real archive: exact slices, incremental reruns, kill -9 at any moment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from indexer.directory import CATALOG_NAME, STORE_NAME
from indexer.pipeline import build_index
from indexer.store import VectorStore
from retrieval.checkpoint import file_sha256, save_checkpoint
from retrieval.cli import app
from retrieval.io import Identity, Skipped, iter_slices
from retrieval.model import DisentangledSiamese
from retrieval.preprocess import is_empty

SUBSET = ["ct/dcm_qa_ct/GE", "ct/tcga_lung/dicom_dir/ID_0000_AGE_0060_CONTRAST_1_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0001_AGE_0069_CONTRAST_1_CT.dcm",
          "mr/myops/101_C0.nii.gz", "mr/myops/101_DE.nii.gz", "mr/myops/102_C0.nii.gz"]
KILL_SUBSET = ["ct/dcm_qa_ct/GE", "mr/open_ms/patient01/study1_T1W.nii.gz", "mr/open_ms/patient01/study1_FLAIR.nii.gz"]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained ResNet18 checkpoint at 64² (fast; the structure is what these tests check)."""
    torch.manual_seed(seed)
    return save_checkpoint(path, DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})


def link_subset(archive: Path, folder: Path, relative: list[str]) -> Path:
    """Symlink archive entries into a folder (nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel in relative:
        (folder / Path(rel).name).symlink_to(archive / rel)
    return folder


def archive_slices(folder: Path, identity: Identity) -> list[tuple[str, int]]:
    """(path, slice index) of every non-empty slice the readers find: what the index must hold."""
    found = [(s.path, s.index) for s in iter_slices([folder], identity) if not isinstance(s, Skipped) and not is_empty(s.pixels, s.modality)]
    return sorted(found)


def persisted(index_dir: Path) -> tuple[list[tuple[str, int]], list[int], list[int], int]:
    """Catalog (path, slice) rows, catalog ids, ids in the FAISS file on disk, incomplete series."""
    with sqlite3.connect(index_dir / CATALOG_NAME) as db:
        rows = db.execute("SELECT path, slice_index, id FROM slices ORDER BY id").fetchall()
        incomplete = db.execute("SELECT count(*) FROM series WHERE NOT complete").fetchone()[0]
    faiss_ids = VectorStore.load(index_dir / STORE_NAME).ids().tolist() if (index_dir / STORE_NAME).exists() else []
    return sorted((p, i) for p, i, _ in rows), [r[2] for r in rows], faiss_ids, incomplete


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def identity(archive) -> Identity:
    return Identity(manifest=archive / "manifest.csv")


def test_index_holds_exactly_the_archive_slices_and_reruns_incrementally(archive, tmp_path, checkpoint, identity) -> None:
    folder = link_subset(archive, tmp_path / "archive", SUBSET)
    index_dir = tmp_path / "idx"
    expected = archive_slices(folder, identity)
    report = build_index([folder], index_dir, identity, checkpoint=checkpoint, batch_size=8, workers=1, show_progress=False)
    rows, ids, faiss_ids, incomplete = persisted(index_dir)
    assert report.slices_added == len(expected) == len(rows) and rows == expected and incomplete == 0
    assert faiss_ids == ids
    with sqlite3.connect(index_dir / CATALOG_NAME) as db:
        path, checksum, patient, model = db.execute("SELECT path, file_checksum, patient_id, model_version FROM slices WHERE path LIKE '%101_C0%'").fetchone()
    assert checksum == file_sha256(path) and patient == "myops-101" and file_sha256(checkpoint).startswith(model)

    again = build_index([folder], index_dir, identity, checkpoint=checkpoint, workers=0, show_progress=False)
    assert (again.slices_added, again.series_indexed, again.series_unchanged) == (0, 0, report.series_indexed)

    (folder / "102_C0.nii.gz").unlink()
    (folder / "102_C0.nii.gz").symlink_to(archive / "mr/myops/104_C0.nii.gz")  # same path, other content
    (folder / "101_DE.nii.gz").unlink()  # left the archive
    elsewhere = link_subset(archive, tmp_path / "elsewhere", ["mr/myops/105_C0.nii.gz"])
    changed = build_index([folder, elsewhere], index_dir, identity, checkpoint=checkpoint, workers=1, show_progress=False)
    assert changed.series_indexed == 2 and changed.series_removed == 2
    rows, ids, faiss_ids, _ = persisted(index_dir)
    assert rows == sorted(archive_slices(folder, identity) + archive_slices(elsewhere, identity)) and faiss_ids == ids

    (elsewhere / "105_C0.nii.gz").unlink()  # gone from disk, outside the folder indexed next
    build_index([folder], index_dir, identity, checkpoint=checkpoint, workers=0, show_progress=False)
    rows, ids, faiss_ids, _ = persisted(index_dir)
    assert rows == archive_slices(folder, identity) and faiss_ids == ids


def test_other_checkpoint_is_refused_with_a_clear_message(archive, tmp_path, checkpoint) -> None:
    folder = link_subset(archive, tmp_path / "archive", SUBSET[3:4])
    runner = CliRunner()
    first = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--workers", "0", "--json"])
    assert first.exit_code == 0, first.output
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    refused = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "idx"), "--checkpoint", str(other), "--workers", "0"])
    assert refused.exit_code == 2 and "built with checkpoint" in refused.output and str(other) in refused.output


def run_and_kill(command: list[str], index_dir: Path, at_least: int) -> None:
    """Start `retrieval index` and kill -9 it once the catalog holds at least `at_least` rows."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with sqlite3.connect(index_dir / CATALOG_NAME, timeout=1) as db:
                    rows = db.execute("SELECT count(*) FROM slices").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0  # the catalog is not created yet
            if rows >= at_least:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return
            time.sleep(0.01)
        pytest.fail("the indexing run ended before it could be killed")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_kill_9_during_indexing_then_rerun_ends_with_exactly_the_archive(archive, tmp_path, checkpoint, identity) -> None:
    folder = link_subset(archive, tmp_path / "archive", KILL_SUBSET)
    index_dir = tmp_path / "idx"
    expected = archive_slices(folder, identity)
    command = [sys.executable, "-m", "retrieval.cli", "index", str(folder), "--index", str(index_dir), "--checkpoint", str(checkpoint),
               "--manifest", str(archive / "manifest.csv"), "--batch-size", "2", "--workers", "1"]
    run_and_kill(command, index_dir, at_least=1)
    rows, ids, faiss_ids, incomplete = persisted(index_dir)
    assert 0 < len(rows) < len(expected) and incomplete >= 1, "the kill landed mid-run"
    assert set(faiss_ids) <= set(ids) or not faiss_ids
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    rows, ids, faiss_ids, incomplete = persisted(index_dir)
    assert rows == expected, "none lost, none duplicated"
    assert len(set(ids)) == len(ids) and faiss_ids == ids and incomplete == 0, "every FAISS id has its row and every row its vector"
