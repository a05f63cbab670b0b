"""The FAISS store: anatomy vectors (unit norm, so inner product = cosine) keyed by catalog row id.

Exact search (IndexFlatIP inside an IndexIDMap2, so ids are the catalog's) is the default. IVF-PQ
is the option for large archives: it is trained on a sample of the vectors, keeps the catalog ids
in its own inverted lists (IndexIDMap2 renumbers rows on removal, which IVF does not: ids would
drift) and reports its recall@10 against exact search.

A store file is read with every length it declares bounded by the file's own size (a corrupt
header never allocates gigabytes), and its content has a digest the catalog can reproduce:
the stored code of every vector (the float32 vector itself, or IVF list + PQ code) is what
`encode` makes of the catalog's vector, so a damaged or rewritten file is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer.faults import crash_point

KINDS = ("flat", "ivfpq", "hnsw")
FILTERED_EXACT = 20_000  # an HNSW search allowed at most this many ids scans them exactly (a graph walk would miss them)
IVFPQ_MIN_VECTORS = 10_000  # below this IVF-PQ cannot be trained well (256 PQ centroids × 39); exact search is used
IVFPQ_TRAIN_SAMPLE = 32_768
RECALL_QUERIES = 500
REFINE = 10  # IVF-PQ shortlist size per wanted result, re-scored with the exact vectors
VectorLookup = Callable[[np.ndarray], np.ndarray]  # sorted ids → their full vectors, row-aligned
KMEANS_ITERATIONS = 10  # for the coarse and the PQ codebooks: 2.5× faster to train than faiss' 25, recall within 0.01
INDEX_HEADER = struct.Struct("<4siqqq?i")  # faiss: fourcc, d, ntotal, two dummies, is_trained, metric type


class StoreError(ValueError):
    """A store file that cannot be used as it is (damaged, truncated, another kind or size); the catalog rebuilds it."""


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


def _best_view_scores(views: np.ndarray, ids: np.ndarray, vectors_of: VectorLookup) -> np.ndarray:
    """Each found id's exact inner product with its best of the (V, Q, D) views, from its stored vector (-inf for -1)."""
    found = np.unique(ids[ids >= 0])
    if not len(found):
        return np.zeros(ids.shape, np.float32)
    best = np.einsum("vqd,nd->vqn", views, _vectors(vectors_of(found))).max(0)
    scores = np.take_along_axis(best, np.searchsorted(found, np.where(ids >= 0, ids, found[0])), 1)
    return np.where(ids >= 0, scores, -np.inf).astype(np.float32)


def _flat(dim: int) -> faiss.IndexIDMap2:
    """An empty exact inner-product index with catalog ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _check_header(path: Path, size: int, dim: int) -> None:
    """Refuse a file whose header is not a store of this size: the flat layout's length is known exactly."""
    with open(path, "rb") as handle:
        head = handle.read(2 * INDEX_HEADER.size + 8)
    if len(head) < INDEX_HEADER.size:
        raise StoreError(f"{size} bytes, too short for a FAISS header")
    fourcc, d, ntotal, _, _, _, metric = INDEX_HEADER.unpack_from(head)
    if fourcc not in (b"IxM2", b"IwPQ") or metric != faiss.METRIC_INNER_PRODUCT:
        raise StoreError(f"not a store of this tool (FAISS type {fourcc!r}, metric {metric})")
    if d != dim or ntotal < 0:
        raise StoreError(f"holds {ntotal} vectors of {d} values, the index uses {dim}")
    if fourcc == b"IwPQ":
        if ntotal * 8 > size:
            raise StoreError(f"declares {ntotal} vectors, more than its {size} bytes can hold")
        return
    if head[INDEX_HEADER.size : INDEX_HEADER.size + 4] == b"IHNf":
        return  # HNSW: the graph's size varies; the bounded read limits what it may allocate
    if len(head) < 2 * INDEX_HEADER.size + 8 or head[INDEX_HEADER.size : INDEX_HEADER.size + 4] != b"IxFI":
        raise StoreError(f"{size} bytes, not an exact inner-product store")
    (declared,) = struct.unpack_from("<Q", head, 2 * INDEX_HEADER.size)  # float32 values of the vectors
    expected = 2 * INDEX_HEADER.size + 8 + 4 * declared + 8 + 8 * ntotal
    if declared != ntotal * dim or expected != size:
        raise StoreError(f"declares {ntotal} vectors ({_bytes(4 * declared)} of vectors) but the file has {_bytes(size)}")


def _bytes(n: int) -> str:
    """A byte count for messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _read_bounded(path: Path, size: int) -> faiss.Index:
    """faiss.read_index with every vector it declares, and every list count, bounded by the file's size."""
    limits = faiss.get_deserialization_vector_byte_limit(), faiss.get_deserialization_loop_limit()
    faiss.set_deserialization_vector_byte_limit(size + 1)
    faiss.set_deserialization_loop_limit(max(1, size // 8))
    try:
        # IVF-PQ's precomputed table is rebuilt after the checks (a no-op for inner product), not sized by the file
        return faiss.read_index(str(path), faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
    finally:
        faiss.set_deserialization_vector_byte_limit(limits[0])
        faiss.set_deserialization_loop_limit(limits[1])


def _ids(ids: np.ndarray) -> np.ndarray:
    """Ids as the contiguous int64 array FAISS wants."""
    return np.ascontiguousarray(ids, dtype=np.int64)


def _vectors(vectors: np.ndarray) -> np.ndarray:
    """Vectors as the contiguous float32 matrix FAISS wants."""
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)


class VectorStore:
    """Catalog-id-keyed vectors (IndexIDMap2 over exact IP, or IVF-PQ with its own ids): atomic save, id-filtered search."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.deleted = np.zeros(0, np.int64)  # HNSW only: ids removed since the graph was built, filtered out of searches

    @classmethod
    def empty(cls, dim: int) -> "VectorStore":
        """A new exact store."""
        return cls(_flat(dim))

    @classmethod
    def load(cls, path: str | Path, dim: int) -> "VectorStore":
        """Read a store written by `save`, refusing (StoreError) anything else before it can allocate beyond the file."""
        path = Path(path)
        size = path.stat().st_size
        _check_header(path, size, dim)
        try:
            index = _read_bounded(path, size)  # already of its concrete type
        except (RuntimeError, MemoryError) as exc:  # faiss raises RuntimeError for bad data, MemoryError for std::bad_alloc
            raise StoreError(f"unreadable ({str(exc).splitlines()[-1][:200]})") from None
        if isinstance(index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(index.index)
            if not isinstance(inner, (faiss.IndexFlatIP, faiss.IndexHNSWFlat)) or index.id_map.size() != index.ntotal:
                raise StoreError("an id map that does not match its vectors")
        elif not isinstance(index, faiss.IndexIVFPQ) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise StoreError(f"not a store of this tool ({type(index).__name__})")
        else:
            index.precompute_table()
        return cls(index)

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.index.d)

    def _ivf(self) -> faiss.IndexIVFPQ | None:
        """The IVF-PQ index when this store is one."""
        return self.index if isinstance(self.index, faiss.IndexIVFPQ) else None

    def _hnsw(self) -> faiss.IndexHNSWFlat | None:
        """The HNSW graph when this store is one."""
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else None
        return inner if isinstance(inner, faiss.IndexHNSWFlat) else None

    @property
    def kind(self) -> str:
        """'ivfpq', 'hnsw' or 'flat'."""
        return "ivfpq" if self._ivf() is not None else "hnsw" if self._hnsw() is not None else "flat"

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
        ivf = self._ivf()
        return int(ivf.nprobe) if ivf is not None else None

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.deleted)

    def ids(self) -> np.ndarray:
        """Ids of the stored vectors (deleted HNSW ids left out), ascending."""
        ids = np.sort(self.entries(copy=False)[0])
        return np.setdiff1d(ids, self.deleted, assume_unique=True) if len(self.deleted) else ids

    def entries(self, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) in store order: each vector's catalog id and the bytes the store keeps for it (see `encode`).

        copy=False returns the exact store's codes as a view of FAISS memory, valid only while this store lives.
        """
        ivf = self._ivf()
        if ivf is None:
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            inner = faiss.downcast_index(self.index.index)
            graph = self._hnsw()
            inner = faiss.downcast_index(graph.storage) if graph is not None else inner  # HNSW keeps the vectors in a flat index
            vectors = faiss.rev_swig_ptr(inner.get_xb(), len(ids) * self.dim) if len(ids) else np.zeros(0, np.float32)
            codes = np.asarray(vectors).view(np.uint8).reshape(len(ids), 4 * self.dim)
            return ids, codes.copy() if copy else codes
        lists, width = ivf.invlists, ivf.coarse_code_size()
        id_parts, code_parts = [], []
        for number in range(ivf.nlist):
            n = lists.list_size(number)
            if n:
                id_parts.append(faiss.rev_swig_ptr(lists.get_ids(number), n).astype(np.int64))
                codes = faiss.rev_swig_ptr(lists.get_codes(number), n * ivf.code_size).reshape(n, ivf.code_size)
                prefix = np.frombuffer(number.to_bytes(8, "little")[:width], np.uint8)
                code_parts.append(np.hstack([np.broadcast_to(prefix, (n, width)), codes]))
        if not id_parts:
            return np.zeros(0, np.int64), np.zeros((0, width + ivf.code_size), np.uint8)
        return np.concatenate(id_parts), np.concatenate(code_parts)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """The bytes this store keeps for these vectors: the float32 vector, or IVF list number + PQ code."""
        vectors = _vectors(vectors)
        ivf = self._ivf()
        return vectors.view(np.uint8).reshape(len(vectors), -1) if ivf is None else ivf.sa_encode(vectors)

    def digest(self) -> str:
        """SHA-256 over ids and codes in store order: what the catalog's vectors reproduce through `encode`."""
        ids, codes = self.entries(copy=False)
        digest = hashlib.sha256(f"{self.kind}:{self.dim}:{len(ids)}:".encode())
        digest.update(np.ascontiguousarray(ids, "<i8").tobytes())
        digest.update(np.ascontiguousarray(codes))
        return digest.hexdigest()

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
        options: dict = {"nprobe": self.nprobe} if self.kind == "ivfpq" else {}
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
            # faiss.contrib.torch_utils (imported by pytorch-metric-learning, among others) replaces `search` with a
            # wrapper that drops `params`; the numpy original it keeps as `search_numpy` takes them.
            search = getattr(self.index, "search_numpy", self.index.search)
            scores, ids = search(queries, fetch, params=params)
        return _rescore(queries, ids, vectors_of, wanted) if refine else (scores, ids)

    def search_views(
        self, views: np.ndarray, k: int, allowed: np.ndarray | None = None, vectors_of: VectorLookup | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query of (V, Q, D) views (a query under its flips/turns), each id scored by its best view.

        An approximate search may reach an id under some views only, so HNSW and IVF-PQ (given `vectors_of`) re-score
        the union of the views' shortlists exactly under every view, reading each id's vector once.
        """
        n_views, n_queries, dim = views.shape
        lookup = self.index.reconstruct_batch if self.kind == "hnsw" else vectors_of if self.kind == "ivfpq" else None
        shortlist = k * REFINE if self.kind == "ivfpq" and lookup is not None else k
        scores, ids = self.search(views.reshape(-1, dim), shortlist, allowed)
        scores = scores.reshape(n_views, n_queries, -1).transpose(1, 0, 2).reshape(n_queries, -1)
        ids = ids.reshape(n_views, n_queries, -1).transpose(1, 0, 2).reshape(n_queries, -1)
        if lookup is not None:
            scores = _best_view_scores(np.asarray(views, np.float32), ids, lookup)
        best_scores = np.zeros((n_queries, max(1, min(k, len(self)))), np.float32)
        best_ids = np.full(best_scores.shape, -1, np.int64)
        for row in range(n_queries):
            order = np.argsort(-scores[row], kind="stable")
            found, first = np.unique(ids[row, order], return_index=True)  # each id's first (best) place
            keep = np.sort(first[found >= 0])[: best_ids.shape[1]]
            best_scores[row, : len(keep)], best_ids[row, : len(keep)] = scores[row, order[keep]], ids[row, order[keep]]
        return best_scores, best_ids

    def save(self, path: str | Path) -> None:
        """Write to a temp file, fsync, then rename over `path`: a reader sees the old or the new index, never half."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        crash_point("faiss-written")
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        crash_point("faiss-replaced")


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
    store = VectorStore(inner)
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
