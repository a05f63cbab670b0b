"""The slice catalog: SQLite through SQLAlchemy 2.0, one row per indexed slice, the source of truth.

Each slice row keeps its anatomy vector, so the FAISS index is a cache that can always be
brought back in line with the catalog (see `indexer.directory`). A series row says whether all
of its slices were committed (`complete`); an incomplete series is redone on the next run.
Row ids are AUTOINCREMENT, so an id is never reused after a delete: FAISS ids stay unambiguous.
Readers (search, info, qc) open the file read-only and never create tables; a missing, empty,
truncated or damaged file is a CatalogError that names the file and how to recover. Everything
SQLite-specific (URLs from paths, pragmas, read-only opening, file checks) is in `indexer.engines`.
A `postgresql://` URL instead of a path puts the same tables in PostgreSQL (psycopg): sequences never
reuse ids either, and every batch is one transaction there too. A `catalog_meta` table records
SCHEMA_VERSION; a catalog of another version is refused with a one-line error (files from before
the stamp are version 1, the same tables).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, delete, func, insert, inspect, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from indexer.engines import CatalogError, damaged, is_url, masked, server_engine, sqlite_engine

T = TypeVar("T")
CHUNK = 20_000  # ids per IN (...) clause, below SQLite's bound-parameter limit
TABLES = ("series", "slices")
SCHEMA_VERSION = 1  # bump with any change to the tables: catalogs of another version are refused, not misread


class Base(DeclarativeBase):
    """Declarative base of the catalog tables."""


class SeriesRow(Base):
    """One series (a DICOM series or a volume file) and whether all its slices are in."""

    __tablename__ = "series"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True)
    patient_id: Mapped[str] = mapped_column(String, index=True)
    study_id: Mapped[str | None] = mapped_column(String, nullable=True)
    series_id: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String)
    path: Mapped[str] = mapped_column(String)
    checksum: Mapped[str] = mapped_column(String)
    n_slices: Mapped[int] = mapped_column(Integer, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)


class SliceRow(Base):
    """One indexed slice: where it came from, its predicted α and its anatomy vector."""

    __tablename__ = "slices"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    patient_id: Mapped[str] = mapped_column(String, index=True)
    study_id: Mapped[str | None] = mapped_column(String, nullable=True)
    series_id: Mapped[str] = mapped_column(String)
    slice_index: Mapped[int] = mapped_column(Integer)
    modality: Mapped[str] = mapped_column(String, index=True)
    path: Mapped[str] = mapped_column(String)
    file_checksum: Mapped[str] = mapped_column(String)
    alpha: Mapped[float] = mapped_column(Float, index=True)
    model_version: Mapped[str] = mapped_column(String)
    index_version: Mapped[str] = mapped_column(String)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class MetaRow(Base):
    """Facts about the catalog itself (key `schema_version`)."""

    __tablename__ = "catalog_meta"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


@dataclass(frozen=True)
class SeriesRecord:
    """What the catalog stores about a series before its slices arrive."""

    key: str
    patient_id: str
    study_id: str | None
    series_id: str
    modality: str
    path: str
    checksum: str


@dataclass(frozen=True)
class SliceRecord:
    """One embedded slice ready to be committed (vector: float32 anatomy embedding)."""

    series_key: str
    slice_index: int
    path: str
    file_checksum: str
    alpha: float
    vector: np.ndarray


@dataclass(frozen=True)
class SliceInfo:
    """A catalog row as search, info and qc report it."""

    id: int
    patient_id: str
    study_id: str | None
    series_id: str
    slice_index: int
    modality: str
    path: str
    alpha: float


def _chunks(values: Iterable[T] | np.ndarray) -> Iterator[list[T]]:
    """Split ids or keys into lists small enough for one IN (...) clause."""
    values = values.tolist() if isinstance(values, np.ndarray) else [v.item() if isinstance(v, np.generic) else v for v in values]
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


class Catalog:
    """The SQLite catalog of one index directory (read-only for readers: no tables created, nothing written)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.location = masked(path)
        self.path = Path(path) if not is_url(path) else Path(self.location)
        self.readonly = readonly
        self.engine = server_engine(str(path)) if is_url(path) else sqlite_engine(self.path, readonly)
        try:
            if not readonly:
                Base.metadata.create_all(self.engine)
            found = set(inspect(self.engine).get_table_names())
            if not set(TABLES) <= found:
                raise damaged(self.path, f"not a catalog of this tool (no {' or '.join(sorted(set(TABLES) - found))} table)")
            self._check_schema("catalog_meta" in found)
        except OperationalError as exc:
            self.engine.dispose()
            raise CatalogError(f"{self.location}: cannot open the catalog ({str(exc.orig).strip().splitlines()[0]})") from None
        except BaseException:
            self.engine.dispose()
            raise

    def _check_schema(self, stamped: bool) -> None:
        """Refuse a catalog of another SCHEMA_VERSION; a writer stamps an unstamped one (version 1 tables)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(MetaRow, "schema_version") if stamped else None
            version = int(row.value) if row is not None else 1
            if version != SCHEMA_VERSION:
                fix = "upgrade medretrieval" if version > SCHEMA_VERSION else "index the archive into a new --index DIR (and a new database)"
                raise CatalogError(f"{self.location}: catalog schema version {version}, this medretrieval reads version {SCHEMA_VERSION}; {fix}")
            if row is None and not self.readonly:
                session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def verify(self) -> str:
        """SQLite's quick_check over every page ("" when sound): builders run it before trusting the file (a server checks its own)."""
        if self.engine.dialect.name != "sqlite":
            return ""
        with self.engine.connect() as connection:
            problems = [row for row in connection.exec_driver_sql("PRAGMA quick_check").scalars() if row != "ok"]
        return "; ".join(problems[:3])

    def series_states(self) -> dict[str, tuple[str, bool]]:
        """series key → (checksum, complete) for every recorded series."""
        with Session(self.engine) as session:
            rows = session.execute(select(SeriesRow.key, SeriesRow.checksum, SeriesRow.complete))
            return {key: (checksum, complete) for key, checksum, complete in rows}

    def series_paths(self) -> dict[str, str]:
        """series key → path of the series (folder or file)."""
        with Session(self.engine) as session:
            return dict(session.execute(select(SeriesRow.key, SeriesRow.path)).all())

    def commit_batch(self, series: Iterable[SeriesRecord], slices: Sequence[SliceRecord], completed: Iterable[str], model_version: str, index_version: str) -> np.ndarray:
        """In one transaction: add new series, add the slices, mark series complete; return the new slice ids in order."""
        with Session(self.engine) as session, session.begin():
            known = set(session.scalars(select(SeriesRow.key)))
            new = [vars(s) for s in series if s.key not in known]
            if new:
                session.execute(insert(SeriesRow), new)
            keys = {s.series_key for s in slices} | set(completed)
            owners = {
                row.key: row
                for chunk in _chunks(keys)
                for row in session.scalars(select(SeriesRow).where(SeriesRow.key.in_(chunk)))
            }
            ids = np.zeros(0, dtype=np.int64)
            if slices:
                values = [
                    {
                        "series_pk": owners[s.series_key].id,
                        "patient_id": owners[s.series_key].patient_id,
                        "study_id": owners[s.series_key].study_id,
                        "series_id": owners[s.series_key].series_id,
                        "modality": owners[s.series_key].modality,
                        "slice_index": s.slice_index,
                        "path": s.path,
                        "file_checksum": s.file_checksum,
                        "alpha": float(s.alpha),
                        "model_version": model_version,
                        "index_version": index_version,
                        "vector": np.ascontiguousarray(s.vector, dtype=np.float32).tobytes(),
                    }
                    for s in slices
                ]
                result = session.scalars(insert(SliceRow).returning(SliceRow.id, sort_by_parameter_order=True), values)
                ids = np.fromiter(result, dtype=np.int64, count=len(values))
            for key in completed:
                count = session.scalar(select(func.count()).select_from(SliceRow).where(SliceRow.series_pk == owners[key].id))
                session.execute(update(SeriesRow).where(SeriesRow.key == key).values(complete=True, n_slices=count))
            return ids

    def _delete_where(self, session: Session, series_condition) -> np.ndarray:  # type: ignore[no-untyped-def]
        """Delete the series matching a condition and their slices; return the slice ids removed."""
        pks = list(session.scalars(select(SeriesRow.id).where(series_condition)))
        ids: list[int] = []
        for chunk in _chunks(pks):
            ids.extend(session.scalars(select(SliceRow.id).where(SliceRow.series_pk.in_(chunk))))
            session.execute(delete(SliceRow).where(SliceRow.series_pk.in_(chunk)))
            session.execute(delete(SeriesRow).where(SeriesRow.id.in_(chunk)))
        return np.asarray(ids, dtype=np.int64)

    def delete_series(self, keys: Iterable[str]) -> np.ndarray:
        """Delete series by key with their slices, in one transaction; return the slice ids removed."""
        with Session(self.engine) as session, session.begin():
            parts = [self._delete_where(session, SeriesRow.key.in_(chunk)) for chunk in _chunks(keys)]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def delete_patient(self, patient_id: str) -> np.ndarray:
        """Delete every series and slice of a patient in one transaction; return the slice ids removed."""
        with Session(self.engine) as session, session.begin():
            return self._delete_where(session, SeriesRow.patient_id == patient_id)

    def ids(self) -> np.ndarray:
        """All slice ids, ascending."""
        with Session(self.engine) as session:
            return np.fromiter(session.scalars(select(SliceRow.id).order_by(SliceRow.id)), dtype=np.int64)

    def vectors(self, ids: Sequence[int] | np.ndarray, dim: int) -> np.ndarray:
        """The stored anatomy vectors of these ids, in the order given (n × dim float32)."""
        found: dict[int, bytes] = {}
        with Session(self.engine) as session:
            for chunk in _chunks(ids):
                found.update(session.execute(select(SliceRow.id, SliceRow.vector).where(SliceRow.id.in_(chunk))).all())
        out = np.empty((len(ids), dim), dtype=np.float32)
        for row, i in enumerate(ids):
            out[row] = np.frombuffer(found[int(i)], dtype=np.float32)
        return out

    def slices(self, ids: Iterable[int]) -> dict[int, SliceInfo]:
        """Catalog rows of these ids (missing ids are absent from the result)."""
        columns = (SliceRow.id, SliceRow.patient_id, SliceRow.study_id, SliceRow.series_id, SliceRow.slice_index, SliceRow.modality, SliceRow.path, SliceRow.alpha)
        out: dict[int, SliceInfo] = {}
        with Session(self.engine) as session:
            for chunk in _chunks(ids):
                for row in session.execute(select(*columns).where(SliceRow.id.in_(chunk))):
                    out[row[0]] = SliceInfo(*row)
        return out

    def members(self, column: str, values: Iterable[str]) -> list[SliceInfo]:
        """Rows whose `column` (patient_id, study_id or series_id) is one of `values`: every slice of some series or studies."""
        columns = (SliceRow.id, SliceRow.patient_id, SliceRow.study_id, SliceRow.series_id, SliceRow.slice_index, SliceRow.modality, SliceRow.path, SliceRow.alpha)
        field_ = {"patient_id": SliceRow.patient_id, "study_id": SliceRow.study_id, "series_id": SliceRow.series_id}[column]
        with Session(self.engine) as session:
            return [SliceInfo(*row) for chunk in _chunks(set(values)) for row in session.execute(select(*columns).where(field_.in_(chunk)).order_by(SliceRow.id))]

    def eligible_ids(self, max_alpha: float | None = None, modality: str | None = None, exclude_patients: Sequence[str] = ()) -> np.ndarray:
        """Ids of slices passing the search filters (α at most max_alpha, this modality, not these patients)."""
        query = select(SliceRow.id)
        if max_alpha is not None:
            query = query.where(SliceRow.alpha <= max_alpha)
        if modality is not None:
            query = query.where(SliceRow.modality == modality)
        if exclude_patients:
            query = query.where(SliceRow.patient_id.not_in(list(exclude_patients)))
        with Session(self.engine) as session:
            return np.fromiter(session.scalars(query), dtype=np.int64)

    def patients(self) -> set[str]:
        """Ids of the patients with at least one slice."""
        with Session(self.engine) as session:
            return set(session.scalars(select(SliceRow.patient_id).distinct()))

    def table(self, columns: Sequence[str], above: float | None = None) -> list[tuple]:
        """Selected slice columns for every row (or rows with α above a threshold), ordered by series then slice."""
        query = select(*(getattr(SliceRow, c) for c in columns)).order_by(SliceRow.series_pk, SliceRow.slice_index)
        if above is not None:
            query = query.where(SliceRow.alpha > above)
        with Session(self.engine) as session:
            return [tuple(row) for row in session.execute(query)]

    def counts(self, column: str) -> dict[str, int]:
        """Number of slices per value of a column (e.g. modality, patient_id, series_id)."""
        field_ = getattr(SliceRow, column)
        with Session(self.engine) as session:
            return dict(session.execute(select(field_, func.count()).group_by(field_)).all())

    def series_count(self) -> tuple[int, int]:
        """(series recorded, series complete)."""
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(SeriesRow)) or 0
            complete = session.scalar(select(func.count()).select_from(SeriesRow).where(SeriesRow.complete)) or 0
            return int(total), int(complete)

