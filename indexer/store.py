"""The FAISS store: anatomy vectors (unit norm, so inner product = cosine) keyed by catalog row id.

Exact search (IndexFlatIP) is the default. IVF-PQ is the option for large archives: it is
trained on a sample of the vectors and reports its recall@10 against exact search.
Both sit inside an IndexIDMap2 so ids are the catalog's ids and can be removed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

KINDS = ("flat", "ivfpq", "hnsw")
FILTERED_EXACT = 20_000  # an HNSW search allowed at most this many ids scans them exactly (a graph walk would miss them)
IVFPQ_MIN_VECTORS = 10_000  # below this IVF-PQ cannot be trained well (256 PQ centroids × 39); exact search is used
IVFPQ_TRAIN_SAMPLE = 32_768
RECALL_QUERIES = 500
REFINE = 10  # IVF-PQ shortlist size per wanted result, re-scored with the exact vectors
VectorLookup = Callable[[np.ndarray], np.ndarray]  # sorted ids → their full vectors, row-aligned
KMEANS_ITERATIONS = 10  # for the coarse and the PQ codebooks: 2.5× faster to train than faiss' 25, recall within 0.01


@dataclass(frozen=True)
class IvfPqParams:
    """IVF-PQ shape: coarse lists, PQ sub-quantisers, lists probed per query."""

    nlist: int
    m: int
    nprobe: int

    @classmethod
    def for_size(cls, n: int, dim: int) -> "IvfPqParams":
        """√n lists (at most 65,536), dim/4 sub-quantisers of 8 bits, 1/16 of the lists probed (at least 16)."""
        nlist = int(min(65_536, max(16, round(math.sqrt(n)))))
        return cls(nlist=nlist, m=max(1, dim // 4), nprobe=min(nlist, max(16, nlist // 16)))


def _rescore(queries: np.ndarray, ids: np.ndarray, vectors_of: VectorLookup, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products for each query's shortlisted ids; the best k, padded with -1."""
    unique = np.unique(ids[ids >= 0])
    table = _vectors(vectors_of(unique)) if len(unique) else np.zeros((0, queries.shape[1]), np.float32)
    rows = np.searchsorted(unique, np.where(ids >= 0, ids, unique[0] if len(unique) else 0))
    scores = np.einsum("qd,qkd->qk", queries, table[rows]) if len(unique) else np.zeros(ids.shape, np.float32)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best, chosen = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return np.where(chosen >= 0, best, 0.0).astype(np.float32), chosen


def _flat(dim: int) -> faiss.IndexIDMap2:
    """An empty exact inner-product index with catalog ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _ids(ids: np.ndarray) -> np.ndarray:
    """Ids as the contiguous int64 array FAISS wants."""
    return np.ascontiguousarray(ids, dtype=np.int64)


def _vectors(vectors: np.ndarray) -> np.ndarray:
    """Vectors as the contiguous float32 matrix FAISS wants."""
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)


class VectorStore:
    """A FAISS IndexIDMap2 (exact or IVF-PQ) with atomic save and id-filtered search."""

    def __init__(self, index: faiss.IndexIDMap2) -> None:
        self.index = index
        self.deleted = np.zeros(0, np.int64)  # HNSW only: ids removed since the graph was built, filtered out of searches

    @classmethod
    def empty(cls, dim: int) -> "VectorStore":
        """A new exact store."""
        return cls(_flat(dim))

    @classmethod
    def load(cls, path: str | Path) -> "VectorStore":
        """Read a store written by `save`."""
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"{path}: not an id-mapped FAISS index")
        return cls(index)

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.index.d)

    def _hnsw(self) -> faiss.IndexHNSWFlat | None:
        """The HNSW graph when this store is one."""
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else None
        return inner if isinstance(inner, faiss.IndexHNSWFlat) else None

    @property
    def kind(self) -> str:
        """'ivfpq', 'hnsw' or 'flat'."""
        if isinstance(faiss.downcast_index(self.index.index), faiss.IndexIVFPQ):
            return "ivfpq"
        return "hnsw" if self._hnsw() is not None else "flat"

    @property
    def ef_search(self) -> int | None:
        """Candidates an HNSW search keeps (HNSW only; saved with the graph)."""
        graph = self._hnsw()
        return int(graph.hnsw.efSearch) if graph is not None else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        graph = self._hnsw()
        if graph is None:
            raise ValueError(f"efSearch is an HNSW setting; this store is {self.kind}")
        graph.hnsw.efSearch = int(value)

    @property
    def nprobe(self) -> int | None:
        """Lists probed per query (IVF-PQ only)."""
        inner = faiss.downcast_index(self.index.index)
        return int(inner.nprobe) if isinstance(inner, faiss.IndexIVF) else None

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.deleted)

    def ids(self) -> np.ndarray:
        """Ids of the stored vectors (deleted HNSW ids left out), ascending."""
        ids = np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        return np.setdiff1d(ids, self.deleted, assume_unique=True) if len(self.deleted) else ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their catalog ids."""
        if len(ids):
            self.index.add_with_ids(_vectors(vectors), _ids(ids))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); return how many were removed. HNSW marks them deleted: FAISS cannot unlink graph nodes."""
        if not len(ids):
            return 0
        if self._hnsw() is None:
            return int(self.index.remove_ids(_ids(ids)))
        gone = np.intersect1d(_ids(ids), self.ids())
        self.deleted = np.union1d(self.deleted, gone)
        return len(gone)

    def _scan(self, queries: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among a few allowed ids, their vectors read back from the store (-1 pads missing hits)."""
        allowed = allowed[~np.isin(allowed, self.deleted)]
        scores = np.zeros((len(queries), k), np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if len(allowed):
            best, rows = faiss.knn(queries, self.index.reconstruct_batch(allowed), min(k, len(allowed)), metric=faiss.METRIC_INNER_PRODUCT)
            scores[:, : rows.shape[1]], found[:, : rows.shape[1]] = best, allowed[rows]
        return scores, found

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, vectors_of: VectorLookup | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products and ids per query, only among `allowed` ids when given (-1 pads missing hits).

        IVF-PQ scores are approximate; with `vectors_of` (ids → their full vectors) a shortlist of
        REFINE × k is re-scored exactly, which brings recall@10 close to exact search.
        """
        queries = _vectors(queries)
        refine = vectors_of is not None and self.kind == "ivfpq"
        wanted = max(1, min(k, len(self)))
        fetch = max(1, min(k * REFINE if refine else k, len(self)))
        inner = faiss.downcast_index(self.index.index)
        options: dict = {"nprobe": int(inner.nprobe)} if isinstance(inner, faiss.IndexIVF) else {}
        if self.kind == "hnsw":
            options["efSearch"] = self.ef_search
            allowed = self.ids() if allowed is None and len(self.deleted) else allowed
            if allowed is not None and len(allowed) <= FILTERED_EXACT:
                return self._scan(queries, _ids(allowed), fetch)
        if allowed is not None:
            allowed = _ids(allowed)
            if not len(allowed) or not len(self):
                return np.zeros((len(queries), wanted), np.float32), np.full((len(queries), wanted), -1, np.int64)
            mask = np.zeros(int(allowed.max()) + 1, dtype=bool)
            mask[allowed] = True
            bitmap = np.packbits(mask, bitorder="little")  # must outlive the search call
            options["sel"] = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n is in bytes
        if not options:
            scores, ids = self.index.search(queries, fetch)
        else:
            kind = faiss.SearchParametersIVF if "nprobe" in options else faiss.SearchParametersHNSW if "efSearch" in options else faiss.SearchParameters
            params = kind(**options)
            scores, ids = self.index.search(queries, fetch, params=params)
        return _rescore(queries, ids, vectors_of, wanted) if refine else (scores, ids)

    def save(self, path: str | Path) -> None:
        """Write to a temp file, fsync, then rename over `path`: a reader sees the old or the new index, never half."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def build_ivfpq(ids: np.ndarray, vectors: np.ndarray, params: IvfPqParams | None = None, seed: int = 0) -> VectorStore:
    """Train IVF-PQ on a sample of the vectors (at most IVFPQ_TRAIN_SAMPLE) and add all of them."""
    vectors = _vectors(vectors)
    n, dim = vectors.shape
    if n < IVFPQ_MIN_VECTORS:
        raise ValueError(f"IVF-PQ needs at least {IVFPQ_MIN_VECTORS} vectors to train, got {n}")
    params = params or IvfPqParams.for_size(n, dim)
    if dim % params.m:
        raise ValueError(f"vector size {dim} is not divisible by the {params.m} PQ sub-quantisers")
    inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, params.nlist, params.m, 8, faiss.METRIC_INNER_PRODUCT)
    inner.cp.seed = inner.pq.cp.seed = seed
    inner.cp.niter = inner.pq.cp.niter = KMEANS_ITERATIONS
    inner.nprobe = params.nprobe
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, IVFPQ_TRAIN_SAMPLE), replace=False))]
    inner.train(sample)
    store = VectorStore(faiss.IndexIDMap2(inner))
    store.add(ids, vectors)
    return store


def lookup(ids: np.ndarray, vectors: np.ndarray) -> VectorLookup:
    """A VectorLookup over vectors held in memory (row i has id ids[i])."""
    order = np.argsort(ids)
    sorted_ids = _ids(ids)[order]
    return lambda wanted: vectors[order[np.searchsorted(sorted_ids, wanted)]]


def recall_at_k(store: VectorStore, ids: np.ndarray, vectors: np.ndarray, k: int = 10, n_queries: int = RECALL_QUERIES, seed: int = 0, refine: bool = True) -> float:
    """Mean fraction of the exact top-k that `store` returns (re-scored as search does unless refine=False), on sampled vectors as queries."""
    vectors = _vectors(vectors)
    if not len(vectors):
        raise ValueError("recall needs at least one vector")
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    _, exact_rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    exact = _ids(ids)[exact_rows]
    _, found = store.search(queries, k, vectors_of=lookup(ids, vectors) if refine else None)
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(exact.tolist(), found.tolist())]))
