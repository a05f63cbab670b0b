"""What an index directory checks on open: is vectors.faiss the store the catalog describes, is the catalog usable.

The FAISS file is a cache of the catalog. It is used as it is only when its content digest is the one
the manifest recorded at the last save, or when every stored code is what the catalog's vector
encodes to (a save interrupted before the manifest was rewritten). Anything else (a missing file that
once existed, a damaged or rewritten one, a header declaring more than the file holds, any load error)
gives an empty store that `IndexDirectory.sync` refills from the catalog, with the reason.
A builder (`retrieval index`) sets a damaged catalog aside and starts a new one; readers and `remove`
get the CatalogError.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from indexer.catalog import Catalog
from indexer.engines import CatalogError, is_url
from indexer.store import StoreError, VectorStore


def disagreements(store: VectorStore, catalog: Catalog) -> int:
    """How many stored vectors of catalog rows are not what the catalog's vector encodes to (ids it lacks are sync's job)."""
    ids, codes = store.entries(copy=False)
    known = np.isin(ids, catalog.ids())
    if not known.any():
        return 0
    expected = store.encode(catalog.vectors(ids[known], store.dim))
    return int(np.any(codes[known] != expected, axis=1).sum())


def load_store(path: Path, dim: int, recorded: str | None, catalog: Catalog) -> tuple[VectorStore, str]:
    """The saved store when it is the recorded one or agrees with the catalog; otherwise an empty store and why."""
    if not path.is_file():
        return VectorStore.empty(dim), ("missing" if recorded else "")
    try:
        store = VectorStore.load(path, dim)
    except (StoreError, OSError, MemoryError) as exc:
        return VectorStore.empty(dim), str(exc)
    if recorded is not None and store.digest() == recorded:
        return store, ""
    wrong = disagreements(store, catalog)
    if wrong:
        return VectorStore.empty(dim), f"{wrong} of its {len(store)} vectors differ from the catalog's"
    return store, ""


def set_aside(path: Path) -> Path:
    """Rename a damaged SQLite file (and its WAL files) out of the way; return its new name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


def open_catalog(path: Path | str, writable: bool, rebuild: bool) -> tuple[Catalog, str]:
    """The catalog (read-only unless writable); with `rebuild`, a damaged one is set aside for a new one, and why."""
    if is_url(path):  # a database server keeps its own files: nothing to check or set aside here
        return Catalog(path, readonly=not writable), ""
    path = Path(path)
    if not writable:
        return Catalog(path, readonly=True), ""
    if not path.exists() and not rebuild:
        raise CatalogError(f"{path}: missing; `retrieval index ARCHIVE --index {path.parent}` rebuilds the index")
    try:
        if path.exists():
            Catalog(path, readonly=True).close()  # the file checks readers make: empty, truncated, not SQLite
        catalog = Catalog(path)
        problem = catalog.verify() if rebuild else ""
        if not problem:
            return catalog, ""
        catalog.close()
        error = CatalogError(f"{path}: damaged ({problem})")
    except CatalogError as exc:
        if not rebuild:
            raise
        error = exc
    moved = set_aside(path)
    return Catalog(path), f"{str(error).split(';')[0]}; set aside as {moved.name}, the index is rebuilt from the archive"
