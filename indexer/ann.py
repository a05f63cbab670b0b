"""Approximate search that keeps its recall (HNSW tuned from measured recall) and the automatic choice of index type.

HNSW (FAISS IndexHNSWFlat, inner product, M links per node) is a graph over the full float32
vectors, so the distances it returns are exact and its only losses are graph misses. efSearch (the
candidates a query keeps) is raised along a ladder until recall@10 against exact search reaches
PROBE_RECALL on `RecallProbe` queries (stored vectors moved by a typical neighbour distance), which is what
it takes for new scans of indexed slices to reach 0.95: the probe overstates them. FAISS cannot delete from an HNSW graph: removed ids
become tombstones that searches filter out (indexer.store), `IndexDirectory.sync` re-derives them
from the catalog on open, and the graph is rebuilt once they pass REBUILD_TOMBSTONES of it.

`choose_kind` picks the way autofaiss does, from a latency and a memory budget: exact search while
its single-query p50 stays within budget on one core (FLAT_MAX vectors: 2.5 ms at 100k, 24 ms at 1M
in docs/benchmarks.md), HNSW while vectors + graph fit the memory budget (half the RAM by default),
IVF-PQ (32-byte codes, re-scored from the catalog) beyond.
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np

from indexer.store import KINDS, VectorStore

INDEX_TYPES = ("auto", *KINDS)  # what --index-type accepts
HNSW_M = 32  # links per node (64 on the bottom layer): recall ≥ 0.95 at small efSearch on 128-d embeddings
EF_CONSTRUCTION = 40  # build-time candidate list (FAISS default); efSearch, tuned per index, buys the recall
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# The probe recall@10 that gives new scans (held-out views of archive slices) 0.95: at 1M vectors (bench_index.py,
# 2026-12-02) the probe read 0.993 at efSearch 16 where held-out views got 0.931, 0.997 at 32 (0.952) and 0.999 at
# 64 (0.977); at 100k, 1.000 at 16 (0.975).
PROBE_RECALL = 0.999
# A query of 8 views (vectors that end in a layout, retrieval.embeddings) finds more at a given efSearch: at 1M 384-d
# vectors (2026-12-02) the probe read 0.998 at efSearch 128, where held-out 8-view queries got 0.956 at 3.1 ms p50
# (256: 0.983, 5.4 ms; 512: probe 0.999, 0.999, 9.6 ms); at 100k, 1.000 at 16 (0.958).
PROBE_RECALL_VIEWS = 0.998
RECALL_QUERIES = 500
FLAT_MAX = 200_000  # 128-d vectors searched by one query vector: exact search up to here keeps a one-core p50 of about 5 ms
HNSW_BYTES_OVER_VECTORS = 8 * HNSW_M + 80  # bottom-layer links (4 B each), upper layers, id map (measured, bench_index.py)
REBUILD_TOMBSTONES = 0.1  # rebuild the graph when this fraction of its nodes are deleted ids


def probe_target(views: int) -> float:
    """The probe recall efSearch is tuned to for queries of `views` vectors each."""
    return PROBE_RECALL if views == 1 else PROBE_RECALL_VIEWS


def hnsw_bytes(n: int, dim: int) -> int:
    """Memory of an HNSW store of n vectors: the float32 vectors plus graph links and the id map."""
    return n * (4 * dim + HNSW_BYTES_OVER_VECTORS)


def memory_budget() -> int:
    """Default memory budget of the vector store: half the machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def flat_max(dim: int, views: int = 1) -> int:
    """Most vectors exact search keeps at FLAT_MAX's latency: its cost grows with the dimension and the query's views."""
    return FLAT_MAX * 128 // (dim * views)


def choose_kind(n: int, dim: int, budget: int | None = None, views: int = 1) -> str:
    """'flat' while exact search is fast enough (for queries of `views` vectors), 'hnsw' while it fits the memory
    budget, else 'ivfpq'."""
    if n <= flat_max(dim, views):
        return "flat"
    return "hnsw" if hnsw_bytes(n, dim) <= (budget or memory_budget()) else "ivfpq"


def build_hnsw(ids: np.ndarray, vectors: np.ndarray, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION) -> VectorStore:
    """An HNSW store (inside an IndexIDMap2, ids = catalog ids) holding these vectors."""
    inner = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = ef_construction
    store = VectorStore(faiss.IndexIDMap2(inner))
    store.add(ids, vectors)
    return store


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of `exact` (ids) that the same row of `found` contains."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact.tolist())]))


class RecallProbe:
    """Queries like new scans of indexed slices, with their exact top-k computed once, to score a store at any setting.

    Each query is a stored vector moved in a random direction by its distance to its nearest other stored vector:
    a new acquisition lands about as far from its indexed twin as neighbouring slices lie from each other. (Stored
    vectors as queries are found trivially by the graph and overstate recall: 1.000 where held-out views of archive
    slices got 0.92 in bench_index.py.)
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, k: int = 10, n_queries: int = RECALL_QUERIES, seed: int = 0) -> None:
        if len(ids) < 2:
            raise ValueError("recall needs at least two vectors")
        rng = np.random.default_rng(seed)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        base = vectors[rng.choice(len(ids), size=min(n_queries, len(ids)), replace=False)]
        nearest, _ = faiss.knn(base, vectors, 2, metric=faiss.METRIC_INNER_PRODUCT)  # itself, then its nearest other
        gap = np.sqrt(np.maximum(2.0 - 2.0 * nearest[:, 1], 0.0))
        step = rng.standard_normal(base.shape).astype(np.float32)
        moved = base + step * (gap / np.linalg.norm(step, axis=1))[:, None]
        self.queries = np.ascontiguousarray(moved / np.linalg.norm(moved, axis=1, keepdims=True), dtype=np.float32)
        self.k = min(k, len(ids))
        self.exact = np.asarray(ids)[faiss.knn(self.queries, vectors, self.k, metric=faiss.METRIC_INNER_PRODUCT)[1]]

    def recall(self, store: VectorStore, **search: Any) -> float:
        """Recall@k of `store` (search options such as vectors_of passed through)."""
        return overlap(store.search(self.queries, self.k, **search)[1], self.exact)


def tune_hnsw(store: VectorStore, probe: RecallProbe, target: float = PROBE_RECALL) -> dict[str, Any]:
    """Set the smallest efSearch on the ladder whose measured recall reaches the target; the manifest's record of it."""
    for ef in EF_LADDER:
        store.ef_search = ef
        recall = probe.recall(store)
        if recall >= target:
            break
    return {"ef_search": store.ef_search, "m": HNSW_M, "recall_at_10": round(recall, 4), "target_recall": target}
