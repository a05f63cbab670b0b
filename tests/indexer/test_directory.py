"""Index directory: manifest refusal, the consistency check that repairs a stale FAISS file, the writer lock."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer.catalog import SeriesRecord, SliceRecord
from indexer.directory import STORE_NAME, IndexBusy, IndexDirectory
from indexer.manifest import IndexMismatch, new_manifest, read_manifest
from indexer.store import IVFPQ_MIN_VECTORS, VectorStore


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
        late = add_series(directory, "late", "P9", 3, seed=7)  # committed after the save, then "killed"
    with IndexDirectory.open(path) as directory:
        assert directory.store.kind == "ivfpq" and directory.repair.added == 3 and consistent(directory)
        queries = directory.catalog.vectors(late, 128)
        assert directory.store.search(queries, 1)[1][:, 0].tolist() == late.tolist()
        allowed = directory.catalog.eligible_ids(max_alpha=0.1)
        scores, found = directory.store.search(queries, 10, allowed=allowed, vectors_of=lambda i: directory.catalog.vectors(i, 128))
        assert set(found.ravel()) - {-1} <= set(allowed.tolist())
        exact = queries @ directory.catalog.vectors(found[0], 128).T
        assert np.allclose(scores[0], exact[0], atol=1e-5), "re-scored with the catalog's exact vectors"
    assert VectorStore.load(path / STORE_NAME).kind == "ivfpq"
