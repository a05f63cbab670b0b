"""`retrieval index` on a subset of the real archive: exact slices, incremental reruns, explicit pruning, kill -9 at a FAISS save."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from indexer.directory import CATALOG_NAME, STORE_NAME, IndexDirectory
from indexer.faults import KILL_AT
from indexer.manifest import read_manifest
from indexer.pipeline import build_index
from indexer.prune import PruneRefused
from indexer.store import VectorStore
from retrieval.checkpoint import file_sha256, save_checkpoint
from retrieval.cli import app

runner = CliRunner()
from retrieval.io import Identity, Skipped, iter_slices
from retrieval.metric import bf16_is_fast
from retrieval.model import DisentangledSiamese
from retrieval.preprocess import is_empty

SUBSET = ["ct/dcm_qa_ct/GE", "ct/tcga_lung/dicom_dir/ID_0000_AGE_0060_CONTRAST_1_CT.dcm", "ct/tcga_lung/dicom_dir/ID_0001_AGE_0069_CONTRAST_1_CT.dcm",
          "mr/myops/101_C0.nii.gz", "mr/myops/101_DE.nii.gz", "mr/myops/102_C0.nii.gz"]
KILL_SUBSET = ["mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz", "ct/tcga_lung/dicom_dir/ID_0000_AGE_0060_CONTRAST_1_CT.dcm"]  # 11 slices


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
    faiss_ids = VectorStore.load(index_dir / STORE_NAME, 128).ids().tolist() if (index_dir / STORE_NAME).exists() else []
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
    assert changed.series_indexed == 2 and changed.series_removed == 0 and changed.series_missing == [str(folder / "101_DE.nii.gz")]
    rows, ids, faiss_ids, _ = persisted(index_dir)
    kept = [row for row in rows if row[0].endswith("101_DE.nii.gz")]
    assert kept and rows == sorted(archive_slices(folder, identity) + archive_slices(elsewhere, identity) + kept) and faiss_ids == ids
    pruned = build_index([folder, elsewhere], index_dir, identity, checkpoint=checkpoint, workers=0, show_progress=False, prune=True)
    assert (pruned.series_removed, pruned.slices_removed, pruned.series_missing) == (1, len(kept), [])
    rows, ids, faiss_ids, _ = persisted(index_dir)
    assert rows == sorted(archive_slices(folder, identity) + archive_slices(elsewhere, identity)) and faiss_ids == ids

    (elsewhere / "105_C0.nii.gz").unlink()  # gone from disk, outside the folder indexed next: its folder now has none
    with pytest.raises(PruneRefused, match=f"{elsewhere}: all 1 indexed series of it are missing"):
        build_index([folder], index_dir, identity, checkpoint=checkpoint, workers=0, show_progress=False, prune=True)
    build_index([folder], index_dir, identity, checkpoint=checkpoint, workers=0, show_progress=False, prune=True, force=True)
    rows, ids, faiss_ids, _ = persisted(index_dir)
    assert rows == archive_slices(folder, identity) and faiss_ids == ids


def test_cpus_without_bf16_units_index_with_the_onnx_export_queries_use(archive, tmp_path, checkpoint, identity) -> None:
    """Where bf16 is emulated (slower than fp32) DIR's fp32 ONNX export embeds the archive, so a stored vector is what a
    query of the same slice embeds to; where bf16 pays, the torch model indexes and nothing is exported."""
    folder = link_subset(archive, tmp_path / "archive", KILL_SUBSET)
    build_index([folder], tmp_path / "idx", identity, checkpoint=checkpoint, workers=0, show_progress=False)
    exported = sorted((tmp_path / "idx").glob("model-*.onnx"))
    assert bool(exported) != bf16_is_fast(torch.device("cpu"))
    with sqlite3.connect(tmp_path / "idx" / CATALOG_NAME) as db:
        ids = dict(((path, index), id_) for path, index, id_ in db.execute("SELECT path, slice_index, id FROM slices"))
    slices = [s for s in iter_slices([folder], identity) if not isinstance(s, Skipped) and not is_empty(s.pixels, s.modality)]
    with IndexDirectory.open(tmp_path / "idx") as directory:
        embedder = directory.embedder()
        queries = embedder.embed([embedder.preprocess(s.pixels, s.modality, s.spacing) for s in slices]).anatomy
        stored = directory.store.index.reconstruct_batch(np.array([ids[(s.path, s.index)] for s in slices], np.int64))
    assert len(slices) == len(ids) > 0
    assert np.abs(queries - stored).max() < (1e-5 if exported else 5e-2)  # torch bf16 against ONNX fp32: bf16 rounding


def test_other_checkpoint_is_refused_with_a_clear_message(archive, tmp_path, checkpoint) -> None:
    folder = link_subset(archive, tmp_path / "archive", SUBSET[3:4])
    first = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--workers", "0", "--json"])
    assert first.exit_code == 0, first.output
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    refused = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "idx"), "--checkpoint", str(other), "--workers", "0"])
    assert refused.exit_code == 2 and "built with checkpoint" in refused.output and str(other) in refused.output


def test_an_emptied_folder_keeps_its_slices_until_pruned_with_force(archive, tmp_path, checkpoint) -> None:
    folder = link_subset(archive, tmp_path / "share", SUBSET[3:6])
    index = ["index", str(folder), "--index", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--workers", "0",
             "--manifest", str(archive / "manifest.csv")]
    assert runner.invoke(app, [*index, "--json"]).exit_code == 0
    before = persisted(tmp_path / "idx")[0]
    (folder / "102_C0.nii.gz").unlink()
    partly = runner.invoke(app, [*index, "--prune", "--json"])  # one series of three gone: pruned
    assert partly.exit_code == 0 and json.loads(partly.stdout)["series_removed"] == 1, partly.output
    kept = persisted(tmp_path / "idx")[0]
    assert kept == [row for row in before if "102_C0" not in row[0]]
    for link in folder.iterdir():  # the share is unmounted: an empty folder
        link.unlink()
    rerun = runner.invoke(app, index)
    assert rerun.exit_code == 0 and persisted(tmp_path / "idx")[0] == kept, rerun.output
    assert "warning: 2 indexed series are missing" in rerun.stderr and "--prune" in rerun.stderr
    refused = runner.invoke(app, [*index, "--prune"])
    assert refused.exit_code == 2 and refused.output.startswith(f"error: {folder}: all 2 indexed series of it are missing")
    assert len(refused.output.strip().splitlines()) == 1 and persisted(tmp_path / "idx")[0] == kept
    forced = runner.invoke(app, [*index, "--prune", "--force", "--json"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["series_removed"] == 2, forced.output
    rows, ids, faiss_ids, _ = persisted(tmp_path / "idx")
    assert rows == [] and ids == faiss_ids == []


KILLED_RUN = """
import sys
from indexer.pipeline import build_index
from retrieval.io import Identity
folder, index_dir, checkpoint, manifest = sys.argv[1:]
build_index([folder], index_dir, Identity(manifest=manifest), checkpoint=checkpoint, batch_size=2, workers=0, show_progress=False, save_every=0.0)
"""


@pytest.mark.parametrize("point", ["faiss-replaced:2", "faiss-written:2"])
def test_kill_9_at_a_faiss_save_then_rerun_ends_with_exactly_the_archive(archive, tmp_path, checkpoint, identity, point) -> None:
    """Killed after the 2nd periodic save replaced vectors.faiss (the manifest still names the 1st), or inside the
    replace (the new file written, not yet renamed); the rerun trusts what agrees with the catalog and finishes."""
    folder = link_subset(archive, tmp_path / "archive", KILL_SUBSET)
    index_dir = tmp_path / "idx"
    expected = archive_slices(folder, identity)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(folder), str(index_dir), str(checkpoint), str(archive / "manifest.csv")],
                            env={**os.environ, KILL_AT: point}, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    rows, ids, faiss_ids, incomplete = persisted(index_dir)
    assert 0 < len(rows) < len(expected) and incomplete >= 1, "the kill landed mid-run"
    assert faiss_ids == ids[: len(faiss_ids)] and 0 < len(faiss_ids) < len(expected)
    on_disk = VectorStore.load(index_dir / STORE_NAME, 128).digest()
    if point.startswith("faiss-replaced"):
        assert faiss_ids == ids and read_manifest(index_dir).store["digest"] != on_disk, "killed between the FAISS save and its digest"
    else:
        assert (index_dir / (STORE_NAME + ".tmp")).is_file() and read_manifest(index_dir).store["digest"] == on_disk
    report = build_index([folder], index_dir, identity, checkpoint=checkpoint, batch_size=8, workers=0, show_progress=False)
    assert report.notes == [], "the saved store agreed with the catalog: nothing rebuilt"
    rows, ids, faiss_ids, incomplete = persisted(index_dir)
    assert rows == expected, "none lost, none duplicated"
    assert len(set(ids)) == len(ids) and faiss_ids == ids and incomplete == 0, "every FAISS id has its row and every row its vector"
    assert read_manifest(index_dir).store["digest"] == VectorStore.load(index_dir / STORE_NAME, 128).digest()
    assert not (index_dir / (STORE_NAME + ".tmp")).exists()


def test_worker_messages_group_small_series_into_one_tensor_and_flush_at_a_failure() -> None:
    """Chunks of one-slice series travel together (about a batch per message, pixels in one storage); a failed
    series ends its message, so a dead source is reported at once; nothing is reordered or lost."""
    from indexer.chunks import Chunk, grouped

    def chunk(key: str, n: int, failed: str | None = None) -> Chunk:
        return Chunk(key, torch.rand(n, 3, 4, 4), list(range(n)), [key] * n, True, failed=failed)

    chunks = [chunk(f"s{i}", 1) for i in range(5)] + [chunk("bad", 0, failed="unreadable")] + [chunk("big", 3), chunk("t", 1)]
    sent = [c.pixels.clone() for c in chunks]
    groups = list(grouped(iter(chunks), 3))
    assert [[c.key for c in g] for g in groups] == [["s0", "s1", "s2"], ["s3", "s4", "bad"], ["big"], ["t"]]
    first = groups[0]
    assert len({c.pixels.untyped_storage().data_ptr() for c in first}) == 1  # one tensor per message
    assert all(torch.equal(c.pixels, pixels) for c, pixels in zip((c for g in groups for c in g), sent))


def test_the_index_stores_the_alpha_a_query_of_the_same_file_reads(tmp_path) -> None:
    """The reader workers carry each slice's resize factor to the α estimator: a small image (pydicom's 64² MR_small,
    read by the shipped checkpoint's small-image trees) is stored with the â `DistortionAwareMetric.alpha` gives it,
    below TAU, not the whole-slice trees' 0.38."""
    from pydicom.data import get_testdata_file

    from retrieval import TAU
    from retrieval.metric import DistortionAwareMetric

    folder = tmp_path / "package"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (folder / name).symlink_to(get_testdata_file(name))
    build_index([folder], tmp_path / "idx", Identity(), workers=0, show_progress=False)
    with sqlite3.connect(tmp_path / "idx" / CATALOG_NAME) as db:
        stored = {Path(path).name: alpha for path, alpha in db.execute("SELECT path, alpha FROM slices")}
    metric = DistortionAwareMetric.load(device="cpu")
    expected = {name: float(metric.alpha(folder / name)[0]) for name in stored}
    assert stored.keys() == {"CT_small.dcm", "MR_small.dcm"} and max(stored.values()) < TAU, stored
    assert all(abs(stored[name] - expected[name]) < 1e-4 for name in stored), (stored, expected)


def test_an_index_folder_inside_its_archive_is_not_read_as_part_of_it(tmp_path, checkpoint) -> None:
    """`retrieval index . --index ./idx`: the index's own files (catalog, FAISS file, manifest, ONNX export) are not
    archive files, so the second run reports nothing skipped and finds the one series unchanged."""
    from pydicom.data import get_testdata_file

    (tmp_path / "ct.dcm").symlink_to(get_testdata_file("CT_small.dcm"))
    command = ["index", str(tmp_path), "--index", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--workers", "0", "--json"]
    first = json.loads(runner.invoke(app, command).stdout)
    second = json.loads(runner.invoke(app, command).stdout)
    assert (first["slices_added"], first["skipped"]) == (1, [])
    assert (second["series_unchanged"], second["slices_added"], second["skipped"]) == (1, 0, []), second["skipped"]
    assert any((tmp_path / "idx").iterdir())
