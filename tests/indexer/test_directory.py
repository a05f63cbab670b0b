"""Index directory: manifest refusal, the consistency check that repairs a stale FAISS file, the writer lock;
a damaged or rewritten FAISS file rebuilt from the catalog, damaged catalogs, read-only storage, odd paths."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.catalog import SeriesRecord, SliceRecord
from indexer.directory import CATALOG_NAME, STORE_NAME, IndexBusy, IndexDirectory, Repair
from indexer.integrity import disagreements
from indexer.manifest import IndexMismatch, new_manifest, read_manifest
from indexer.store import INDEX_HEADER, IVFPQ_MIN_VECTORS, VectorStore
from retrieval.cli import app


def manifest(sha: str = "a" * 64, size: int = 64, kind: str = "flat"):
    return new_manifest(sha, "/models/m.pt", {"backbone": "resnet18", "size": size}, size, kind)


def add_series(directory: IndexDirectory, key: str, patient: str, n: int, seed: int = 0) -> np.ndarray:
    """Commit a series to the catalog (not to FAISS, as a run killed before its save would leave it)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    record = SeriesRecord(key, patient, None, key, "CT", f"/a/{key}", "sum")
    return directory.catalog.commit_batch([record], [SliceRecord(key, i, f"/a/{key}/{i}", "f", 0.1, v) for i, v in enumerate(vectors)], [key], "m", "0.1")


def consistent(directory: IndexDirectory) -> bool:
    return directory.store.ids().tolist() == directory.catalog.ids().tolist()


def test_new_directory_then_other_checkpoint_refused(tmp_path) -> None:
    path = tmp_path / "idx"
    IndexDirectory.open(path, manifest(), writable=True).close()
    assert read_manifest(path).checkpoint_sha256 == "a" * 64
    with pytest.raises(IndexMismatch, match="built with checkpoint aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        IndexDirectory.open(path, manifest("b" * 64), writable=True)
    with pytest.raises(IndexMismatch, match="preprocessing"):
        IndexDirectory.open(path, manifest(size=128), writable=True)
    with pytest.raises(FileNotFoundError, match="no index here"):
        IndexDirectory.open(tmp_path / "nothing")


def test_refuses_a_folder_that_is_not_an_index(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="not empty and not an index"):
        IndexDirectory.open(tmp_path, manifest(), writable=True)


def test_rows_missing_from_faiss_are_added_back_on_open(tmp_path) -> None:
    with IndexDirectory.open(tmp_path / "idx", manifest(), writable=True) as directory:
        first = add_series(directory, "s1", "P1", 5)
        directory.store.add(first, directory.catalog.vectors(first, 128))
        directory.save()
        add_series(directory, "s2", "P2", 7, seed=1)  # committed, then "killed" before the FAISS save
    reader = IndexDirectory.open(tmp_path / "idx")
    assert (reader.repair.added, reader.repair.removed) == (7, 0) and consistent(reader)
    assert not (tmp_path / "idx" / STORE_NAME).stat().st_size == 0
    reader.close()
    with IndexDirectory.open(tmp_path / "idx", writable=True) as writer:
        assert writer.repair.added == 7
    with IndexDirectory.open(tmp_path / "idx") as again:
        assert not again.repair and consistent(again), "a writer persists the repair"


def test_ids_deleted_from_catalog_are_dropped_and_corrupt_faiss_rebuilt(tmp_path) -> None:
    path = tmp_path / "idx"
    with IndexDirectory.open(path, manifest(), writable=True) as directory:
        for n, patient in enumerate(["P1", "P2"]):
            ids = add_series(directory, f"s{n}", patient, 4, seed=n)
            directory.store.add(ids, directory.catalog.vectors(ids, 128))
        directory.save()
        directory.catalog.delete_patient("P1")  # "killed" before the FAISS save
    with IndexDirectory.open(path, writable=True) as directory:
        assert (directory.repair.added, directory.repair.removed) == (0, 4) and consistent(directory)
    (path / STORE_NAME).write_bytes(b"garbage")
    with IndexDirectory.open(path) as directory:
        assert directory.repair.added == 4 and consistent(directory)
        _, found = directory.store.search(directory.catalog.vectors(directory.catalog.ids()[:1], 128), 1)
        assert found[0, 0] == directory.catalog.ids()[0]


def test_one_writer_at_a_time(tmp_path) -> None:
    with IndexDirectory.open(tmp_path / "idx", manifest(), writable=True):
        with pytest.raises(IndexBusy, match="another"):
            IndexDirectory.open(tmp_path / "idx", writable=True)
        IndexDirectory.open(tmp_path / "idx").close()  # readers are fine
    IndexDirectory.open(tmp_path / "idx", writable=True).close()


def test_remove_patient_and_ivfpq_request_below_minimum(tmp_path) -> None:
    with IndexDirectory.open(tmp_path / "idx", manifest(kind="ivfpq"), writable=True) as directory:
        for n, patient in enumerate(["P1", "P2", "P1"]):
            ids = add_series(directory, f"s{n}", patient, 3, seed=n)
            directory.store.add(ids, directory.catalog.vectors(ids, 128))
        assert directory.remove_patient("P1") == 6
        assert directory.catalog.patients() == {"P2"} and consistent(directory)
        directory.reshape("ivfpq")
        assert directory.manifest.index == {"requested": "ivfpq", "kind": "flat"}, "too few vectors to train IVF-PQ: exact search"


@pytest.fixture()
def one_faiss_thread():
    """Train single-threaded: on 2 shared cores OpenMP's second thread makes k-means about 4× slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_ivfpq_is_trained_reports_recall_and_is_repaired_like_exact(tmp_path, one_faiss_thread) -> None:
    path = tmp_path / "idx"
    with IndexDirectory.open(path, manifest(kind="ivfpq"), writable=True) as directory:
        centres = np.random.default_rng(9).standard_normal((50, 128))
        for n in range(5):  # 50 "patients" of clustered slices, 10,500 rows in 5 transactions
            key = f"s{n}"
            rng = np.random.default_rng(n)
            vectors = (centres[rng.integers(0, 50, IVFPQ_MIN_VECTORS // 5 + 100)] + 0.5 * rng.standard_normal((IVFPQ_MIN_VECTORS // 5 + 100, 128))).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            record = SeriesRecord(key, f"P{n}", None, key, "MR", f"/a/{key}", "sum")
            rows = [SliceRecord(key, i, f"/a/{key}/{i}", "f", 0.05 * n, v) for i, v in enumerate(vectors)]
            directory.store.add(directory.catalog.commit_batch([record], rows, [key], "m", "0.1"), vectors)
        directory.reshape("ivfpq")
        directory.save()
        index = directory.manifest.index
        assert index["kind"] == "ivfpq" and index["trained_on"] == len(directory.store)
        assert 0.5 < index["recall_at_10_codes_only"] < index["recall_at_10"] and index["recall_at_10"] > 0.95, index
        assert disagreements(directory.store, directory.catalog) == 0, "every PQ code is what the catalog's vector encodes to"
        trained = directory.store
        directory.reshape("ivfpq")
        assert directory.store is trained, "the archive has not doubled since training: kept"
        directory.manifest.index["trained_on"] = len(trained) // 2 - 1  # as if trained when the archive was half its size
        directory.reshape("ivfpq")
        assert directory.store is not trained and directory.manifest.index["trained_on"] == len(trained), "doubled: retrained"
        assert directory.remove_patient("P0") > 0 and consistent(directory)
        kept = directory.catalog.ids()[::500]
        assert top_hits(directory, kept) == kept.tolist(), "removal keeps every other id on its own vector"
        late = add_series(directory, "late", "P9", 3, seed=7)  # committed after the save, then "killed"
    with IndexDirectory.open(path) as directory:
        assert directory.store.kind == "ivfpq" and directory.repair == Repair(added=3) and consistent(directory)
        queries = directory.catalog.vectors(late, 128)
        assert directory.store.search(queries, 1)[1][:, 0].tolist() == late.tolist()
        allowed = directory.catalog.eligible_ids(max_alpha=0.1)
        scores, found = directory.store.search(queries, 10, allowed=allowed, vectors_of=lambda i: directory.catalog.vectors(i, 128))
        assert set(found.ravel()) - {-1} <= set(allowed.tolist())
        exact = queries @ directory.catalog.vectors(found[0], 128).T
        assert np.allclose(scores[0], exact[0], atol=1e-5), "re-scored with the catalog's exact vectors"
    assert VectorStore.load(path / STORE_NAME, 128).kind == "ivfpq"


# --- an index that checks itself ------------------------------------------------------------------

def saved_index(path: Path) -> list[np.ndarray]:
    """An exact index of three patients (six slices each), saved: FAISS file and manifest digest agree."""
    with IndexDirectory.open(path, manifest(), writable=True) as directory:
        ids = [add_series(directory, f"s{n}", f"P{n}", 6, seed=n) for n in range(3)]
        directory.sync()
        directory.save()
    return ids


def top_hits(directory: IndexDirectory, ids: np.ndarray) -> list[int]:
    """The best match of each row's own catalog vector (itself, when the store is right)."""
    return directory.store.search(directory.catalog.vectors(ids, 128), 1)[1][:, 0].tolist()


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with a single `error:` line holding every word, and no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(word in lines[0] for word in words), lines[0]


def test_vectors_rewritten_under_the_same_ids_are_rebuilt_from_the_catalog(tmp_path) -> None:
    path = tmp_path / "idx"
    ids = saved_index(path)
    held, codes = VectorStore.load(path / STORE_NAME, 128).entries()
    forged = VectorStore.empty(128)
    forged.add(held, np.roll(codes.view(np.float32), 6, axis=0))  # each patient's vectors now under the next patient's ids
    faiss.write_index(forged.index, str(path / STORE_NAME))
    assert forged.search(forged.encode(codes.view(np.float32)[:1]).view(np.float32), 1)[1][0, 0] == ids[1][0], "unchecked: a wrong first hit"
    with IndexDirectory.open(path) as directory:
        assert directory.repair.rebuilt == "18 of its 18 vectors differ from the catalog's"
        assert top_hits(directory, ids[0]) == ids[0].tolist() and top_hits(directory, ids[2]) == ids[2].tolist()
        assert directory.notes == [f"{path / STORE_NAME}: 18 of its 18 vectors differ from the catalog's; rebuilt from the catalog "
                                   "(18 vectors) for this run (the next `retrieval index` or `remove` saves it)"]
    result = cli("info", "--index", str(path), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["slices"] == 18
    assert result.stderr.startswith("warning: ") and len(result.stderr.splitlines()) == 1 and "differ" in result.stderr
    IndexDirectory.open(path, writable=True).close()  # a writer saves the rebuilt store and its digest
    with IndexDirectory.open(path) as directory:
        assert not directory.repair and not directory.notes


def test_a_save_killed_before_the_manifest_is_trusted_after_checking_the_catalog(tmp_path) -> None:
    path = tmp_path / "idx"
    saved_index(path)
    with IndexDirectory.open(path, writable=True) as directory:
        late = add_series(directory, "late", "P9", 4, seed=9)
        directory.store.add(late, directory.catalog.vectors(late, 128))
        directory.store.save(path / STORE_NAME)  # "killed" before the manifest (and its digest) was rewritten
    assert read_manifest(path).store["digest"] != VectorStore.load(path / STORE_NAME, 128).digest()
    with IndexDirectory.open(path) as directory:
        assert not directory.repair and consistent(directory) and top_hits(directory, late) == late.tolist()


def test_a_header_declaring_24_gib_is_refused_before_anything_is_allocated(tmp_path) -> None:
    path = tmp_path / "idx"
    ids = saved_index(path)
    good = (path / STORE_NAME).read_bytes()
    vectors_at = 2 * INDEX_HEADER.size  # the flat store's length field, counted in float32 values
    damaged = bytearray(good)
    struct.pack_into("<Q", damaged, vectors_at, 24 * 2**30 // 4)
    (path / STORE_NAME).write_bytes(damaged)
    with IndexDirectory.open(path) as directory:
        assert "declares 18 vectors (24.0 GiB of vectors) but the file has" in directory.repair.rebuilt
        assert top_hits(directory, ids[1]) == ids[1].tolist()
    ids_at = vectors_at + 8 + 18 * 128 * 4  # the id map's length: the header check passes, the bounded reader refuses
    damaged = bytearray(good)
    struct.pack_into("<Q", damaged, ids_at, 24 * 2**30 // 8)
    (path / STORE_NAME).write_bytes(damaged)
    probe = ("import re, sys; from pathlib import Path; from indexer.store import VectorStore, StoreError\n"
             "try: VectorStore.load(sys.argv[1], 128)\nexcept StoreError as exc: print('refused:', exc)\n"
             "print(int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]) // 1024)")  # this process's peak, not the parent's
    out = subprocess.run([sys.executable, "-c", probe, str(path / STORE_NAME)], capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert out[0].startswith("refused: unreadable") and int(out[1]) < 1024, out  # MiB peak: nothing near 24 GiB was touched
    with IndexDirectory.open(path, writable=True) as directory:
        assert directory.repair.rebuilt.startswith("unreadable") and consistent(directory)
    with IndexDirectory.open(path) as directory:
        assert not directory.repair and top_hits(directory, ids[2]) == ids[2].tolist()


# --- a catalog opened as meant ---------------------------------------------------------------------

def test_damaged_catalogs_are_one_line_errors_and_index_sets_them_aside(tmp_path) -> None:
    path = tmp_path / "idx"
    saved_index(path)
    catalog = path / CATALOG_NAME
    whole = catalog.read_bytes()
    recovery = f"`retrieval index ARCHIVE --index {path}` sets it aside and rebuilds the index"
    catalog.write_bytes(b"")
    for command in (["info"], ["qc"], ["remove", "--patient", "P1"]):
        one_line_error(cli(*command, "--index", str(path)), str(catalog), "empty (0 bytes)", recovery)
    assert catalog.stat().st_size == 0, "a reader never creates tables"
    catalog.write_bytes(whole[: len(whole) // 2])
    one_line_error(cli("info", "--index", str(path)), str(catalog), "truncated", recovery)
    catalog.write_bytes(whole[:4096] + np.random.default_rng(0).bytes(len(whole) - 4096))
    one_line_error(cli("qc", "--index", str(path)), str(catalog), "malformed", recovery)
    with IndexDirectory.open(path, manifest(), writable=True) as directory:  # what `retrieval index` does
        assert len(directory.notes) == 1 and "set aside as catalog.sqlite.damaged-" in directory.notes[0]
        assert directory.catalog.ids().tolist() == [] and len(directory.store) == 0
    assert len([p for p in path.glob(CATALOG_NAME + ".damaged-*") if not p.name.endswith(("-wal", "-shm"))]) == 1


def test_an_index_on_read_only_storage_is_searched_and_refuses_writers(tmp_path, read_only_copy) -> None:
    path = tmp_path / "idx"
    ids = saved_index(path)
    frozen = read_only_copy(path)
    with IndexDirectory.open(frozen) as directory:
        assert top_hits(directory, ids[0]) == ids[0].tolist() and not directory.repair
    result = cli("info", "--index", str(frozen), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["by_patient"] == {"P0": 6, "P1": 6, "P2": 6}, result.output
    one_line_error(cli("remove", "--index", str(frozen), "--patient", "P1"), str(frozen), "cannot write here")
    assert sorted(p.name for p in frozen.iterdir()) == sorted(p.name for p in path.iterdir()), "nothing was written"


def test_index_paths_stay_inside_the_folder_and_a_file_is_not_a_folder(tmp_path) -> None:
    odd = tmp_path / "q?x#y%20"
    with IndexDirectory.open(odd, manifest(), writable=True) as directory:
        add_series(directory, "s0", "P0", 2)
        directory.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd.name]
    assert (odd / CATALOG_NAME).stat().st_size > 0
    with IndexDirectory.open(odd) as directory:
        assert len(directory.catalog.ids()) == 2
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for command in (["info"], ["qc"], ["remove", "--patient", "P1"], ["search", str(a_file)]):
        one_line_error(cli(*command, "--index", str(a_file)), f"--index {a_file}: a file, not a folder")
    one_line_error(cli("search", str(a_file), "--index", str(odd), "--manifest", str(tmp_path)), f"--manifest {tmp_path}: a folder, not a file")
    with pytest.raises(FileNotFoundError, match="a file, not an index folder"):
        IndexDirectory.open(a_file, manifest(), writable=True)


def test_manifests_copy_the_checkpoint_config_without_patient_ids(archive, tmp_path) -> None:
    """No patient id of the sample archive reaches an index's manifest.json, from the shipped config or a legacy one."""
    import csv

    import torch

    from retrieval.checkpoint import DEFAULT_CHECKPOINT

    with open(archive / "manifest.csv", newline="") as handle:
        ids = {row["patient_id"] for row in csv.DictReader(handle)}
    shipped = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)["config"]
    legacy = {**shipped, "validation_patients": sorted(ids)[:17]}  # how checkpoints listed their held-out patients before digests
    for name, config in (("shipped", shipped), ("legacy", legacy)):
        IndexDirectory.open(tmp_path / name, new_manifest("a" * 64, DEFAULT_CHECKPOINT, config, 64), writable=True).close()
        written = (tmp_path / name / "manifest.json").read_text()
        assert not [patient for patient in ids if patient in written], name
    assert read_manifest(tmp_path / "legacy").checkpoint_config["validation_patients_count"] == 17
