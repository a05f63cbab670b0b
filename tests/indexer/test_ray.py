"""`retrieval index --ray` on a real local Ray cluster (2 workers): the single-process catalog and results, and a killed worker."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from indexer.directory import CATALOG_NAME, IndexDirectory
from indexer.pipeline import build_index
from retrieval.io import Identity
from retrieval.search import search_path

ray = pytest.importorskip("ray")

MYOPS = [f"mr/myops/{n}_{seq}.nii.gz" for n in (101, 102, 104, 105, 108, 109, 111, 112) for seq in ("C0", "DE")]
SUBSET = ["ct/dcm_qa_ct/GE", *MYOPS]


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    for attempt in range(2):  # Ray gives its raylet 30 s to register: a second try on a machine too busy for the first
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:  # noqa: BLE001 - ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt:
                raise
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive_subset(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Identity]:
    root = tmp_path_factory.mktemp("ray-archive")
    for rel in SUBSET:
        (root / Path(rel).name).symlink_to(archive / rel)
    return root, Identity(manifest=archive / "manifest.csv")


@pytest.fixture(scope="module")
def single(archive_subset, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    root, identity = archive_subset
    index = tmp_path_factory.mktemp("single") / "idx"
    build_index([root], index, identity, workers=0, show_progress=False)
    return index


def catalog_rows(index: Path) -> dict[tuple[str, int], tuple]:
    """(path, slice index) → (patient, series, modality, anatomy vector bytes, α) for every catalog row."""
    with IndexDirectory.open(index) as directory:
        rows = directory.catalog.table(["id", "path", "slice_index", "patient_id", "series_id", "modality", "alpha"])
        vectors = directory.catalog.vectors([r[0] for r in rows], directory.store.dim)
    return {(r[1], r[2]): (*r[3:6], vector.tobytes(), r[6]) for r, vector in zip(rows, vectors)}


def same_catalog(index: Path, reference: Path) -> bool:
    """The same rows with the same anatomy vectors and α, to bf16 noise: the single process sends small series to the
    model together, Ray one series a call, and oneDNN's bf16 convolutions may round a slice differently in another batch."""
    ours, theirs = catalog_rows(index), catalog_rows(reference)

    def close(a: tuple, b: tuple) -> bool:
        vectors = np.frombuffer(a[3], np.float32), np.frombuffer(b[3], np.float32)
        return a[:3] == b[:3] and np.abs(vectors[0] - vectors[1]).max() < 1e-3 and abs(a[-1] - b[-1]) < 1e-3

    return ours.keys() == theirs.keys() and all(close(ours[k], theirs[k]) for k in ours)


def test_ray_gives_the_single_process_catalog_and_results(cluster, archive: Path, archive_subset, single: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, identity = archive_subset
    report = build_index([root], tmp_path / "idx", identity, ray="auto", show_progress=False)
    assert report.slices_added == len(catalog_rows(single)) and report.series_indexed == len(SUBSET)
    assert same_catalog(tmp_path / "idx", single)
    for query, slice_index in (("ct/dcm_qa_ct/GE/05.dcm", None), ("mr/myops/104_DE.nii.gz", 1), ("mr/myops/110_C0.nii.gz", 2)):
        results = []
        for index in (single, tmp_path / "idx"):
            with IndexDirectory.open(index) as directory:
                found = search_path(directory, directory.embedder(), archive / query, identity, slice_index=slice_index, k=5)
            results.append([(r.patient_id, [(s.path, s.slice_index) for s in r.slices], r.distance) for r in found.results])
        assert [r[:2] for r in results[0]] == [r[:2] for r in results[1]]
        assert np.allclose([r[2] for r in results[0]], [r[2] for r in results[1]], atol=1e-3)
    again = build_index([root], tmp_path / "idx", identity, ray="auto", show_progress=False)
    assert again.slices_added == 0 and again.series_unchanged == report.series_indexed


def committed(index: Path) -> int:
    """Slices the run has committed so far (0 before its catalog has any), read as SQLite readers do, without a lock."""
    try:
        with closing(sqlite3.connect(f"file:{index / CATALOG_NAME}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT count(*) FROM slices").fetchone()[0]
    except sqlite3.Error:
        return 0


def actor_processes() -> list[int]:
    """Pids of this machine's Ray Data actors embedding series (Ray titles them after the class)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"SeriesEmbedder" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, archive_subset, single: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, identity = archive_subset
    index, outcome = tmp_path / "idx", {}
    run = threading.Thread(target=lambda: outcome.update(report=build_index([root], index, identity, ray="auto", batch_size=4, show_progress=False)))
    run.start()
    killed = False
    while run.is_alive() and not killed:
        actors = actor_processes()
        if actors and committed(index):
            os.kill(actors[0], signal.SIGKILL)  # one of the two workers, while series are in flight
            killed = True
        time.sleep(0.05)
    run.join(timeout=600)
    assert killed and "report" in outcome, "the run ended before a worker could be killed"
    expected = len(catalog_rows(single))
    assert outcome["report"].slices_added == expected and len(catalog_rows(index)) == expected
    assert same_catalog(index, single)
    rerun = build_index([root], index, identity, ray="auto", show_progress=False)
    assert rerun.slices_added == 0 and len(catalog_rows(index)) == expected
    with IndexDirectory.open(index) as directory:
        np.testing.assert_array_equal(directory.store.ids(), directory.catalog.ids())
