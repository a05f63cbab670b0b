"""One index directory: manifest.json, catalog.sqlite and vectors.faiss, opened consistently.

Write order makes every crash recoverable: the manifest is written before anything else; catalog
batches commit atomically (rows with their vectors); the FAISS file is only ever replaced whole.
So the catalog is always right and the FAISS file at worst stale: on open, ids the catalog lacks
are removed from the index and rows the index lacks are added back from the stored vectors, and a
FAISS file that is not what the catalog describes is rebuilt from it (indexer/integrity.py).
Writers (index, remove) hold an exclusive lock on DIR/.lock; readers need none (SQLite WAL) and
open the catalog read-only, so an index on read-only storage can be searched.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from indexer.ann import REBUILD_TOMBSTONES, RecallProbe, build_hnsw, choose_kind, probe_target, tune_hnsw
from indexer.catalog import Catalog
from indexer.engines import masked
from indexer.integrity import load_store, open_catalog
from indexer.manifest import MANIFEST_NAME, IndexMismatch, Manifest, read_manifest, write_manifest
from indexer.store import IVFPQ_MIN_VECTORS, REFINE, VectorStore, build_ivfpq, recall_at_k

CATALOG_NAME = "catalog.sqlite"
STORE_NAME = "vectors.faiss"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class Repair:
    """What the consistency check on open changed in the FAISS index."""

    added: int = 0
    removed: int = 0
    rebuilt: str = ""  # why vectors.faiss was rebuilt from the catalog ("" when it was used as it is)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.rebuilt)


class IndexUnavailable(RuntimeError):
    """The index directory cannot be written now: another writer holds it, or its storage is read-only."""


class IndexBusy(IndexUnavailable):
    """Another process is writing to the index directory."""


class IndexReadOnly(IndexUnavailable):
    """The index directory is on storage this process cannot write."""


class IndexDirectory:
    """Manifest, catalog and FAISS store of one DIR, kept in agreement."""

    def __init__(self, path: Path, manifest: Manifest, catalog: Catalog, store: VectorStore, lock: int | None) -> None:
        self.path = path
        self.manifest = manifest
        self.catalog = catalog
        self.store = store
        self.lock_fd = lock
        self.repair = Repair()
        self.notes: list[str] = []  # one line each about what opening changed (a rebuilt store, a catalog set aside)

    @classmethod
    def open(cls, path: str | Path, expected: Manifest | None = None, writable: bool = False, catalog: str | None = None) -> "IndexDirectory":
        """Open DIR (creating it from `expected` when it has no manifest), check it matches, repair the index.

        `catalog`: a postgresql:// URL; DIR keeps the catalog it was built with (manifest.json, without the password).
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileNotFoundError(f"{path}: a file, not an index folder; give --index a folder")
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is None and expected is None:
            raise FileNotFoundError(f"{path}: no index here (no manifest.json); build one with `retrieval index ARCHIVE --index {path}`")
        if manifest is None and path.is_dir() and any(p.name not in (LOCK_NAME, MANIFEST_NAME + ".tmp") for p in path.iterdir()):
            raise FileNotFoundError(f"{path}: not empty and not an index (no manifest.json); choose a new or empty --index DIR")
        if manifest is not None and expected is not None:
            manifest.check(path, expected.checkpoint_sha256, expected.checkpoint_path, expected.preprocessing)
        lock = None
        if writable:
            lock = _lock(path)
        try:
            if manifest is None:
                manifest = expected
                write_manifest(path, manifest)
            catalog, reset = open_catalog(_catalog_location(path, manifest, catalog), writable, rebuild=expected is not None)
            store, why = load_store(path / STORE_NAME, manifest.embedding_size, manifest.store.get("digest"), catalog)
            directory = cls(path, manifest, catalog, store, lock)
            directory.repair = replace(directory.sync(), rebuilt=why)
            directory.notes = [note for note in (reset, why and directory._rebuilt_note(why)) if note]
            if why:
                manifest.index.update(kind=store.kind)  # an IVF-PQ store comes back exact; `index` retrains it
            if directory.repair and writable:
                directory.save()
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        return directory

    def sync(self) -> Repair:
        """Make the FAISS ids exactly the catalog's ids: drop extra ids, add missing rows' stored vectors."""
        rows, held = self.catalog.ids(), self.store.ids()
        extra = np.setdiff1d(held, rows, assume_unique=True)
        missing = np.setdiff1d(rows, held, assume_unique=True)
        self.store.remove(extra)
        self.store.add(missing, self.catalog.vectors(missing, self.store.dim))
        return Repair(added=len(missing), removed=len(extra))

    def save(self) -> None:
        """Replace the FAISS file atomically, then the manifest (only writers call this)."""
        if self.lock_fd is None:
            raise RuntimeError(f"{self.path}: opened read-only")
        self.store.save(self.path / STORE_NAME)
        self.manifest.store = {"digest": self.store.digest(), "vectors": len(self.store), "kind": self.store.kind}
        write_manifest(self.path, self.manifest)

    def _rebuilt_note(self, why: str) -> str:
        """The line that says the FAISS file was rebuilt from the catalog, and whether that was saved."""
        kept = "and saved" if self.lock_fd is not None else "for this run (the next `retrieval index` or `remove` saves it)"
        return f"{self.path / STORE_NAME}: {why}; rebuilt from the catalog ({len(self.store)} vectors) {kept}"

    def remove_patient(self, patient_id: str) -> int:
        """Delete a patient's rows (one transaction), drop their vectors and save; return slices removed."""
        ids = self.catalog.delete_patient(patient_id)
        self.store.remove(ids)
        self.save()
        return len(ids)

    def reshape(self, requested: str) -> None:
        """Make the store the requested kind ('auto': indexer.ann.choose_kind by size and memory).

        IVF-PQ is (re)trained when absent or the archive doubled since training. HNSW is built when absent
        or when deleted ids pass REBUILD_TOMBSTONES of its graph, and its efSearch re-tuned then and whenever
        the archive doubled.
        """
        kind = choose_kind(len(self.store), self.store.dim, views=self.query_views) if requested == "auto" else requested
        trained_on = int(self.manifest.index.get("trained_on", 0))
        if kind == "hnsw":
            self._reshape_hnsw()
        elif kind == "ivfpq" and len(self.store) >= IVFPQ_MIN_VECTORS and (self.store.kind != "ivfpq" or len(self.store) > 2 * trained_on):
            ids = self.catalog.ids()
            vectors = self.catalog.vectors(ids, self.store.dim)
            self.store = build_ivfpq(ids, vectors)
            self.manifest.index = {
                "trained_on": len(ids), "nprobe": self.store.nprobe, "refine": REFINE,
                "recall_at_10": round(recall_at_k(self.store, ids, vectors), 4),
                "recall_at_10_codes_only": round(recall_at_k(self.store, ids, vectors, refine=False), 4),
            }
        elif kind == "flat" and self.store.kind != "flat":
            self.store = VectorStore.empty(self.store.dim)
            self.sync()
            self.manifest.index = {}
        self.manifest.index.update(requested=requested, kind=self.store.kind)

    def _reshape_hnsw(self) -> None:
        """Build (or rebuild) the HNSW graph from the catalog's vectors when needed, and tune its efSearch to the target recall."""
        nodes = len(self.store) + len(self.store.deleted)
        rebuild = self.store.kind != "hnsw" or len(self.store.deleted) > REBUILD_TOMBSTONES * nodes
        if not rebuild and len(self.store) <= 2 * int(self.manifest.index.get("tuned_on", 0)):
            return
        ids = self.catalog.ids()
        vectors = self.catalog.vectors(ids, self.store.dim)
        if rebuild:
            self.store = build_hnsw(ids, vectors)
        tuned = tune_hnsw(self.store, RecallProbe(ids, vectors), probe_target(self.query_views)) if len(ids) > 1 else {}
        self.manifest.index = {"tuned_on": len(ids), **tuned}

    @property
    def layout(self) -> int:
        """Trailing columns of the stored vectors that are a layout thumbnail (0: none), from the checkpoint's config."""
        from retrieval.embeddings import layout_columns

        return layout_columns(self.manifest.checkpoint_config)

    @property
    def query_views(self) -> int:
        """Vectors a query searches with: its 8 flips/turns when the vectors end in a layout, else 1."""
        return 8 if self.layout else 1

    def metric(self, checkpoint: str | Path | None = None, device: str = "auto"):  # type: ignore[no-untyped-def]
        """Load the checkpoint this index was built with (or `checkpoint`, which must be the same file content)."""
        from indexer.manifest import preprocessing
        from retrieval.metric import DistortionAwareMetric

        path = Path(checkpoint) if checkpoint is not None else Path(self.manifest.checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found (this index was built with {self.manifest.checkpoint_sha256[:12]}); pass --checkpoint")
        metric = DistortionAwareMetric.load(path, device)
        self.manifest.check(self.path, metric.checkpoint_hash, str(path), preprocessing(metric.size))
        return metric

    def embedder(self, checkpoint: str | Path | None = None, device: str = "auto", backend: str = "auto"):  # type: ignore[no-untyped-def]
        """The query embedder: ONNX Runtime on CPU (torch never imported; DIR's export of the checkpoint, made once), or `metric`."""
        import warnings

        from indexer.manifest import preprocessing
        from retrieval.checkpoint import file_sha256
        from retrieval.runtime import OnnxMetric, ensure_model, resolve_backend

        if resolve_backend(backend, device) == "torch":
            return self.metric(checkpoint, device)
        sha = self.manifest.checkpoint_sha256
        if checkpoint is not None:
            self.manifest.check(self.path, file_sha256(checkpoint), str(checkpoint), self.manifest.preprocessing)
        source = Path(checkpoint) if checkpoint is not None else Path(self.manifest.checkpoint_path)
        try:
            path = ensure_model(self.path, source, sha)
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: checkpoint not found (this index was built with {sha[:12]}); pass --checkpoint") from None
        except OSError as exc:  # PermissionError, or EROFS on a read-only mount
            warnings.warn(f"{self.path}: cannot write the ONNX export ({exc.strerror}); using the torch model", stacklevel=2)
            return self.metric(checkpoint, device)
        metric = OnnxMetric(path, checkpoint_hash=sha, config=self.manifest.checkpoint_config)  # loads while the query is read
        self.manifest.check(self.path, metric.checkpoint_hash, str(path), preprocessing(metric.size))
        return metric

    def close(self) -> None:
        """Release the catalog and the writer lock."""
        self.catalog.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def __enter__(self) -> "IndexDirectory":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _catalog_location(path: Path, manifest: Manifest, url: str | None) -> Path | str:
    """DIR's catalog: the URL given (it must be the one DIR was built with), the one DIR records, or DIR/catalog.sqlite."""
    if url and masked(url) != (manifest.catalog or str(path / CATALOG_NAME)):
        raise IndexMismatch(f"{path}: its catalog is {manifest.catalog or path / CATALOG_NAME}, not {masked(url)}; use that or another --index DIR")
    return url or manifest.catalog or path / CATALOG_NAME


def _lock(path: Path) -> int:
    """Take DIR's exclusive writer lock (released by the OS even on kill -9)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise IndexReadOnly(f"{path}: cannot write here ({exc.strerror}); searches work, to change the index copy it to writable storage") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexBusy(f"{path}: another `retrieval index` or `remove` is writing this index; wait for it to finish") from None
    return fd

