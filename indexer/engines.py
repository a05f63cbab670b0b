"""SQLAlchemy engines for the catalog, by location: an SQLite file (checked before SQLite sees it, read-only for
readers) or a postgresql:// URL (psycopg 3); and the one-line CatalogError for a location that cannot be used."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

SQLITE_MAGIC = b"SQLite format 3\x00"


class CatalogError(ValueError):
    """The catalog file is missing, empty, truncated, damaged or not a catalog of this tool."""


def damaged(path: Path, why: str) -> CatalogError:
    """The one-line error for an unusable catalog file, with the way to recover."""
    return CatalogError(f"{path}: {why}; `retrieval index ARCHIVE --index {path.parent}` sets it aside and rebuilds the index")


def _check_sqlite_file(path: Path) -> None:
    """Refuse a missing, empty, non-SQLite or truncated file before SQLite sees it (it would take an empty file as a new database)."""
    if not path.is_file():
        raise damaged(path, "missing")
    size = path.stat().st_size
    if size == 0:
        raise damaged(path, "empty (0 bytes)")
    with open(path, "rb") as handle:
        header = handle.read(100)
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        raise damaged(path, "not an SQLite database")
    page_size = int.from_bytes(header[16:18], "big") or 65_536  # 1 means 65,536
    pages, changes, valid_for = (int.from_bytes(header[o : o + 4], "big") for o in (28, 24, 92))
    if changes == valid_for and pages * (65_536 if page_size == 1 else page_size) > size:
        raise damaged(path, f"truncated ({size} of {pages * page_size} bytes)")


def _readonly_storage(folder: Path) -> bool:
    """True when nothing can be created in the folder (a read-only mount, an immutable folder), even as root."""
    return not os.access(folder, os.W_OK) or bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def sqlite_engine(path: Path, readonly: bool) -> Engine:
    """An engine on an SQLite file. Writers: WAL journal, foreign keys. Readers: `mode=ro`, and `immutable=1`
    on read-only storage unless a WAL file holds changes (then SQLite reads it read-only)."""
    path = path.absolute()
    if not readonly:
        engine = create_engine(URL.create("sqlite", database=str(path)))  # any path, '?' and '#' included, stays a file name

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # a killed writer never corrupts the file
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        _check_sqlite_file(path)
        wal = path.with_name(path.name + "-wal")
        frozen = _readonly_storage(path.parent) and not (wal.is_file() and wal.stat().st_size)
        uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if frozen else "")
        # QueuePool, not the SingletonThreadPool "sqlite://" implies: that one closes connections other threads are using (a server segfaults)
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), poolclass=QueuePool)

    @event.listens_for(engine, "handle_error")
    def _on_error(context) -> Exception | None:  # type: ignore[no-untyped-def]
        error = context.original_exception
        message = str(error)
        if isinstance(error, sqlite3.DatabaseError) and not any(w in message for w in ("locked", "busy", "readonly")):
            return damaged(path, f"unreadable ({message})")
        return None

    return engine


def is_url(location: str | Path) -> bool:
    """True for a database URL (postgresql://…), false for an SQLite file path."""
    return isinstance(location, str) and "://" in location


def masked(location: str | Path) -> str:
    """A catalog location as manifests and messages show it: URLs without their password (libpq finds it in PGPASSWORD or ~/.pgpass)."""
    if not is_url(location):
        return str(location)
    try:
        return make_url(str(location)).set(password=None).render_as_string(hide_password=False)
    except ArgumentError:
        return str(location).split("@")[-1]


def server_engine(url: str) -> Engine:
    """An engine on a PostgreSQL catalog (psycopg 3), connections checked before use."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogError(f"{url}: not a database URL ({exc})") from None
    if parsed.get_backend_name() != "postgresql":
        raise CatalogError(f"{masked(url)}: catalogs are an SQLite file or a postgresql:// URL")
    try:
        import psycopg  # noqa: F401 - the driver SQLAlchemy loads for postgresql+psycopg
    except ImportError:
        raise CatalogError(f'{masked(url)}: a PostgreSQL catalog needs psycopg: pip install -e ".[postgres]"') from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True)
