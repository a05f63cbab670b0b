"""The index a server answers from: opened once, then reopened whole whenever `retrieval index` changes it.

A snapshot is an `IndexDirectory` opened read-only whose in-memory FAISS store holds exactly the
slices of the series that were complete when its catalog state was read: a search never sees a
series half-added, and never a row without its vector. A watcher stats the catalog, its WAL and
the manifest every second; when they changed and the catalog's state (slice count, highest id,
slices of complete series, index kind) differs from the snapshot's, it opens a new snapshot beside
the old one and swaps them in one assignment. A request holds the snapshot it started with; a
replaced snapshot is closed when its last request ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.directory import CATALOG_NAME, IndexDirectory
from indexer.manifest import MANIFEST_NAME, read_manifest
from retrieval.serve.records import catalog_state, completion

log = logging.getLogger("retrieval.serve")


@dataclass
class Snapshot:
    """One consistent view of the index directory and the state it was read at."""

    directory: IndexDirectory
    state: tuple[Any, ...]
    users: int = 0


def _stamp(path: Path) -> tuple[Any, ...]:
    """Inode, mtime and size of the catalog, its WAL and the manifest: cheap to poll, changed by every commit."""
    out: list[Any] = []
    for name in (CATALOG_NAME, CATALOG_NAME + "-wal", MANIFEST_NAME):
        try:
            st = (path / name).stat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _files(path: Path) -> tuple[Any, ...]:
    """The catalog file's inode (a rebuilt directory is a new file) and the manifest's index entry."""
    manifest = read_manifest(path)
    return (path / CATALOG_NAME).stat().st_ino, repr(manifest.index if manifest else None)


def open_snapshot(path: Path) -> Snapshot:
    """Open DIR read-only and keep in its FAISS store only the slices of series complete at the state it records."""
    files = _files(path)
    directory = IndexDirectory.open(path)
    try:
        ids, complete = completion(directory)
        highest = int(ids.max()) if len(ids) else 0
        directory.sync()  # rows committed since the open's own check get their vectors
        held = directory.store.ids()
        directory.store.remove(np.union1d(ids[~complete], held[held > highest]))
        return Snapshot(directory, (*files, len(ids), highest, int(complete.sum())))
    except BaseException:
        directory.close()
        raise


class LiveIndex:
    """The current snapshot, swapped atomically on change; `use()` pins one for a request."""

    def __init__(self, path: str | Path, on_reload: Callable[[IndexDirectory], None] = lambda _d: None) -> None:
        """Open the first snapshot; `on_reload` is called with each later one once it is swapped in."""
        self.path = Path(path)
        self.on_reload = on_reload
        self._lock = threading.Lock()
        self._stamp = _stamp(self.path)
        self._current = open_snapshot(self.path)
        self._retired: list[Snapshot] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reloads = 0

    @contextmanager
    def use(self) -> Iterator[IndexDirectory]:
        """The current snapshot, kept open until the block ends even if a newer one replaces it meanwhile."""
        with self._lock:
            snapshot = self._current
            snapshot.users += 1
        try:
            yield snapshot.directory
        finally:
            with self._lock:
                snapshot.users -= 1
                self._close_idle()

    def refresh(self) -> bool:
        """Reopen the directory if it changed since the current snapshot; return whether one was swapped in."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        with self.use() as directory:
            unchanged = (*_files(self.path), *catalog_state(directory)) == self._current.state
        if not unchanged:
            fresh = open_snapshot(self.path)
            with self._lock:
                self._retired.append(self._current)
                self._current = fresh
                self._close_idle()
            self.reloads += 1
            self.on_reload(fresh.directory)
            log.info("index %s reloaded: %d slices", self.path, len(fresh.directory.store))
        self._stamp = stamp
        return not unchanged

    def watch(self, every_s: float) -> None:
        """Check for changes every `every_s` seconds in a daemon thread (a failed reopen is logged and retried)."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 - a writer mid-change: keep serving the old snapshot, retry
                    log.warning("index %s: reload failed, still serving the previous state (%s)", self.path, exc)

        self._watcher = threading.Thread(target=loop, name="index-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching and close every snapshot."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            for snapshot in [*self._retired, self._current]:
                snapshot.directory.close()
            self._retired = []

    def _close_idle(self) -> None:
        """Close replaced snapshots that no request holds any more (called with the lock held)."""
        for snapshot in [s for s in self._retired if s.users == 0]:
            snapshot.directory.close()
        self._retired = [s for s in self._retired if s.users]
