"""Approximate search that keeps its recall (HNSW tuned from measured recall) and the automatic choice of index type.

HNSW (FAISS IndexHNSWFlat, inner product, M links per node) is a graph over the full float32
vectors, so the distances it returns are exact and its only losses are graph misses. efSearch (the
candidates a query keeps) is raised along a ladder until recall@10 against exact search reaches
TARGET_RECALL, measured on stored vectors used as queries with each query's own id left out of both
lists (a query never counts finding itself). FAISS cannot delete from an HNSW graph: removed ids
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
TARGET_RECALL = 0.95
RECALL_QUERIES = 500
FLAT_MAX = 200_000  # exact search up to here keeps a one-core p50 of about 5 ms
HNSW_BYTES_OVER_VECTORS = 8 * HNSW_M + 80  # bottom-layer links (4 B each), upper layers, id map (measured, bench_index.py)
REBUILD_TOMBSTONES = 0.1  # rebuild the graph when this fraction of its nodes are deleted ids


def hnsw_bytes(n: int, dim: int) -> int:
    """Memory of an HNSW store of n vectors: the float32 vectors plus graph links and the id map."""
    return n * (4 * dim + HNSW_BYTES_OVER_VECTORS)


def memory_budget() -> int:
    """Default memory budget of the vector store: half the machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def choose_kind(n: int, dim: int, budget: int | None = None) -> str:
    """'flat' while exact search is fast enough, 'hnsw' while it fits the memory budget, else 'ivfpq'."""
    if n <= FLAT_MAX:
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
    """Stored vectors as queries with their exact top-k (own id left out), computed once, to score a store at any setting."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, k: int = 10, n_queries: int = RECALL_QUERIES, seed: int = 0) -> None:
        if len(ids) < 2:
            raise ValueError("recall needs at least two vectors")
        rows = np.random.default_rng(seed).choice(len(ids), size=min(n_queries, len(ids)), replace=False)
        self.k = min(k, len(ids) - 1)
        self.queries, self.own = np.ascontiguousarray(vectors[rows], dtype=np.float32), np.asarray(ids)[rows]
        _, exact = faiss.knn(self.queries, np.ascontiguousarray(vectors, dtype=np.float32), self.k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        self.exact = self._others(np.asarray(ids)[exact])

    def _others(self, found: np.ndarray) -> np.ndarray:
        """Each row without the query's own id, cut to k."""
        return np.stack([row[row != own][: self.k] for row, own in zip(found, self.own)])

    def recall(self, store: VectorStore, **search: Any) -> float:
        """Recall@k of `store` (search options such as vectors_of passed through)."""
        _, found = store.search(self.queries, self.k + 1, **search)
        return overlap(self._others(found), self.exact)


def tune_hnsw(store: VectorStore, probe: RecallProbe, target: float = TARGET_RECALL) -> dict[str, Any]:
    """Set the smallest efSearch on the ladder whose measured recall reaches the target; the manifest's record of it."""
    for ef in EF_LADDER:
        store.ef_search = ef
        recall = probe.recall(store)
        if recall >= target:
            break
    return {"ef_search": store.ef_search, "m": HNSW_M, "recall_at_10": round(recall, 4), "target_recall": target}
