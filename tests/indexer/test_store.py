"""FAISS store: exact and IVF-PQ search by catalog id, id filters, removal, atomic save."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.store import VectorStore, build_ivfpq, recall_at_k


def unit_vectors(n: int, dim: int = 128, clusters: int = 64, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (like embeddings of many slices of fewer patients)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def flat() -> tuple[VectorStore, np.ndarray, np.ndarray]:
    vectors = unit_vectors(500)
    ids = np.arange(1000, 1500, dtype=np.int64)
    store = VectorStore.empty(128)
    store.add(ids, vectors)
    return store, ids, vectors


def test_exact_search_finds_itself_under_its_catalog_id(flat) -> None:
    store, ids, vectors = flat
    scores, found = store.search(vectors[:20], 5)
    assert found[:, 0].tolist() == ids[:20].tolist()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_search_views_keeps_each_ids_best_view(flat) -> None:
    """A query searched under several views: the exact top-k of max-over-views similarity, each id once."""
    store, ids, vectors = flat
    views = np.stack([vectors[:6], vectors[200:206], unit_vectors(6, seed=3)])  # (3 views, 6 queries, D)
    scores, found = store.search_views(views, 12)
    best = (views @ vectors.T).max(axis=0)  # (6, 500) brute force
    for row in range(6):
        assert len(set(found[row].tolist())) == 12
        expected = np.argsort(-best[row], kind="stable")[:12]
        assert np.allclose(scores[row], best[row, expected], atol=1e-5)
        assert set(found[row].tolist()) == set(ids[expected].tolist())
    assert np.allclose(scores[:, :2], 1.0, atol=1e-5)  # two views are stored vectors: both come first


def test_allowed_ids_filter_inside_search_still_returns_k(flat) -> None:
    store, ids, vectors = flat
    allowed = ids[:60][::4]  # the lowest ids: every other id lies past the selector's bitmap
    _, found = store.search(vectors[100:110], 10, allowed=allowed)
    assert (found >= 0).all(), "k eligible ids exist, so k come back"
    assert set(found.ravel()) <= set(allowed.tolist())
    _, none = store.search(vectors[:2], 3, allowed=np.zeros(0, np.int64))
    assert (none == -1).all()


def test_filtered_search_survives_faiss_torch_utils(flat) -> None:
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps Index.search for a wrapper without `params`."""
    import faiss.contrib.torch_utils  # noqa: F401  (patches every faiss index class for the rest of the process)

    store, ids, vectors = flat
    allowed = ids[:60][::4]
    _, found = store.search(vectors[100:110], 10, allowed=allowed)
    assert (found >= 0).all() and set(found.ravel()) <= set(allowed.tolist())


def test_remove_and_ids(flat) -> None:
    store, ids, vectors = flat
    assert store.remove(ids[:10]) == 10
    assert store.remove(np.array([1, 2], np.int64)) == 0
    assert store.ids().tolist() == ids[10:].tolist()
    _, found = store.search(vectors[:10], 3)
    assert not set(found.ravel()) & set(ids[:10].tolist())


def test_save_replaces_whole_file_and_loads_back(flat, tmp_path) -> None:
    store, ids, vectors = flat
    path = tmp_path / "vectors.faiss"
    store.save(path)
    store.remove(ids[:100])
    store.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.faiss"]
    loaded = VectorStore.load(path, 128)
    assert loaded.ids().tolist() == ids[100:].tolist()
    assert loaded.search(vectors[200:201], 1)[1][0, 0] == ids[200]


def test_exact_store_has_recall_one_against_itself(flat) -> None:
    store, ids, vectors = flat
    assert recall_at_k(store, ids, vectors, n_queries=100) == 1.0


def test_ivfpq_refuses_too_few_vectors() -> None:
    with pytest.raises(ValueError, match="at least"):
        build_ivfpq(np.arange(100), unit_vectors(100))


def test_ivfpq_multi_view_search_reads_each_vector_once_and_scores_exactly() -> None:
    """The views' shortlists are re-scored exactly under every view in one read of the full vectors (from the catalog)."""
    vectors = unit_vectors(10_000, dim=64)
    ids = np.arange(7, 10_007, dtype=np.int64)
    store = build_ivfpq(ids, vectors)
    reads: list[np.ndarray] = []
    full = lambda wanted: (reads.append(wanted), vectors[wanted - 7])[1]  # noqa: E731 — the real vectors, reads counted
    rng = np.random.default_rng(2)
    views = vectors[rng.integers(0, len(vectors), 12)] + 0.05 * rng.standard_normal((8, 12, 64)).astype(np.float32)
    scores, found = store.search_views(views, 10, vectors_of=full)
    assert len(reads) == 1 and len(reads[0]) == len(np.unique(reads[0]))
    best = (views @ vectors.T).max(axis=0)
    np.testing.assert_allclose(scores, np.take_along_axis(best, found - 7, 1), atol=1e-5)
    exact = np.argsort(-best, axis=1)[:, :10] + 7
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]) >= 0.95
