"""HNSW that keeps its recall: tuned efSearch, deletions as tombstones, exact filtered scans, the automatic index type."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.ann import FLAT_MAX, RecallProbe, build_hnsw, choose_kind, flat_max, hnsw_bytes, probe_target, tune_hnsw
from indexer.directory import IndexDirectory
from indexer.store import FILTERED_EXACT, VectorStore
from retrieval.cli import app

TCGA = [f"ct/tcga_lung/dicom_dir/ID_000{i}_AGE_00{age}_CONTRAST_1_CT.dcm" for i, age in ((0, 60), (1, 69), (4, 56))]
SUBSET = ["ct/dcm_qa_ct/GE", *TCGA, "mr/myops/101_C0.nii.gz", "mr/myops/102_C0.nii.gz", "mr/open_ms/patient01/study1_T2W.nii.gz"]


def curves(n: int, dim: int = 128, patients: int = 60, seed: int = 0) -> np.ndarray:
    """Unit vectors along smooth random walks, one walk per 'patient': neighbouring slices lie on a curve, as real embeddings do."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((patients, n // patients + 1, dim)).astype(np.float32) * 0.15
    walks = rng.standard_normal((patients, 1, dim)).astype(np.float32) + np.cumsum(steps, axis=1)
    out = walks.reshape(-1, dim)[:n]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def graph() -> tuple[np.ndarray, np.ndarray, VectorStore]:
    vectors = curves(6000)
    ids = np.arange(100, 100 + len(vectors), dtype=np.int64)
    faiss.omp_set_num_threads(1)
    return ids, vectors, build_hnsw(ids, vectors)


def exact(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return ids[faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]]


def test_efsearch_is_tuned_to_the_target_recall_and_saved(graph, tmp_path: Path) -> None:
    ids, vectors, store = graph
    probe = RecallProbe(ids, vectors, n_queries=200)
    tuned = tune_hnsw(store, probe, target=0.97)
    assert tuned["recall_at_10"] >= 0.97 and store.ef_search == tuned["ef_search"]
    store.ef_search = 1  # the probe measures what the setting does: a one-candidate walk loses neighbours
    assert probe.recall(store) < tuned["recall_at_10"]
    store.ef_search = tuned["ef_search"]
    store.save(tmp_path / "v.faiss")
    loaded = VectorStore(faiss.read_index(str(tmp_path / "v.faiss")))
    assert loaded.kind == "hnsw" and loaded.ef_search == tuned["ef_search"] and probe.recall(loaded) == tuned["recall_at_10"]


def test_multi_view_search_scores_every_found_id_by_its_best_view(graph) -> None:
    """A query of 8 views on a coarse graph: some ids are reached under a few views only, yet each comes back with
    its exact best-view inner product, as exact search would score it."""
    ids, vectors, built = graph
    store = VectorStore(faiss.clone_index(built.index))
    store.ef_search = 1
    rng = np.random.default_rng(1)
    views = vectors[rng.integers(0, len(vectors), 20)] + 0.03 * rng.standard_normal((8, 20, vectors.shape[1])).astype(np.float32)  # 8 views of each query
    scores, found = store.search_views(views, 10)
    best = (views @ vectors.T).max(axis=0)  # (20, N): every id under its best view
    assert (found >= 0).all()
    np.testing.assert_allclose(scores, np.take_along_axis(best, found - ids[0], 1), atol=1e-5)


def test_deleted_ids_never_come_back_and_small_filters_are_exact(graph) -> None:
    ids, vectors, built = graph
    store = VectorStore(faiss.clone_index(built.index))
    store.ef_search = built.ef_search
    gone = ids[::3]
    assert store.remove(np.concatenate([gone, [10**9]])) == len(gone) and len(store) == len(ids) - len(gone)
    assert not np.isin(gone, store.ids()).any()
    _, found = store.search(vectors[gone[:50]], 10)
    assert not np.isin(found, gone).any()
    allowed = ids[(ids % 7 == 0)]
    assert len(allowed) <= FILTERED_EXACT
    kept = allowed[~np.isin(allowed, gone)]
    _, found = store.search(vectors[:20], 10, allowed=allowed)
    np.testing.assert_array_equal(found, exact(vectors[:20], kept, vectors[kept - 100], 10))


def test_automatic_index_type_follows_size_and_memory() -> None:
    assert choose_kind(FLAT_MAX, 128) == "flat"
    assert choose_kind(FLAT_MAX + 1, 128, budget=hnsw_bytes(FLAT_MAX + 1, 128)) == "hnsw"
    assert choose_kind(10_000_000, 128, budget=2**30) == "ivfpq"
    # 384-d vectors searched under 8 views cost 24× a 128-d single vector: exact search stops 24× sooner
    assert flat_max(384, views=8) == FLAT_MAX // 24
    assert choose_kind(FLAT_MAX // 24, 384, views=8) == "flat" and choose_kind(FLAT_MAX // 24 + 1, 384, views=8, budget=2**40) == "hnsw"


def cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_hnsw_index_end_to_end_same_results_as_exact(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    for rel in SUBSET:
        (tmp_path / "archive" / Path(rel).name).symlink_to(archive / rel)
    identity = ["--manifest", str(archive / "manifest.csv")]
    index = str(tmp_path / "idx")
    first = cli("index", str(tmp_path / "archive"), "--index", index, "--workers", "0", *identity)
    assert first["index"]["requested"] == "auto" and first["index"]["kind"] == "flat"  # a small archive stays exact
    query = ["search", str(archive / "mr/open_ms/patient01/study1_T2W.nii.gz"), "--index", index, "--slice", "20", "-k", "4", *identity]
    before = cli(*query)
    report = cli("index", str(tmp_path / "archive"), "--index", index, "--workers", "0", "--index-type", "hnsw", *identity)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())["index"]
    assert report["index"]["kind"] == manifest["kind"] == "hnsw" and manifest["recall_at_10"] >= 0.95 and manifest["ef_search"] >= 16
    assert manifest["target_recall"] == probe_target(8) < probe_target(1)  # the shipped vectors end in a layout: 8-view queries
    assert manifest["tuned_on"] == report["slices_added"] + first["slices_added"]
    after = cli(*query)["results"]  # approximate: the same patients in the same order, each found by its best slice
    exact = before["results"]
    assert [r["patient_id"] for r in after] == [r["patient_id"] for r in exact]
    assert [r["slices"][0]["path"] for r in after] == [r["slices"][0]["path"] for r in exact]
    assert after[0]["distance"] == pytest.approx(exact[0]["distance"], abs=1e-6)  # the query's own patient, exactly
    # every found slice is re-scored under all 8 query views, though HNSW may have reached it under some of them only
    assert [r["distance"] for r in after] == pytest.approx([r["distance"] for r in exact], abs=1e-5)
    removed = cli("remove", "--index", index, "--patient", before["results"][0]["patient_id"])["slices_removed"]
    with IndexDirectory.open(index) as directory:  # reopened: sync marks the removed rows deleted again
        assert directory.store.kind == "hnsw" and len(directory.store.deleted) == removed
    after = [r["patient_id"] for r in cli(*query)["results"]]
    assert after[:3] == [r["patient_id"] for r in before["results"][1:]] and before["results"][0]["patient_id"] not in after
    cli("index", str(tmp_path / "archive"), "--index", index, "--workers", "0", "--index-type", "hnsw", *identity)  # puts the patient back
    with IndexDirectory.open(index) as directory:  # > 10% deleted: the graph was rebuilt without them
        assert directory.store.kind == "hnsw" and not len(directory.store.deleted) and len(directory.store) == len(directory.catalog.ids())
