"""Catalog reads the server needs beyond search, info and qc: change detection, patient listings, slice ids."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from indexer.catalog import SeriesRow, SliceRow

if TYPE_CHECKING:
    from indexer.directory import IndexDirectory

LOOKUP_CHUNK = 300  # (path, slice_index) pairs per OR clause, far below SQLite's expression-depth limit


def catalog_state(directory: IndexDirectory) -> tuple[int, int, int]:
    """(slices, highest slice id, slices of complete series) in one statement: any commit that adds, deletes or completes changes it."""
    query = select(func.count(SliceRow.id), func.coalesce(func.max(SliceRow.id), 0), func.coalesce(func.sum(case((SeriesRow.complete, 1), else_=0)), 0))
    with Session(directory.catalog.engine) as session:
        slices, highest, complete = session.execute(query.join(SeriesRow, SliceRow.series_pk == SeriesRow.id)).one()
    return int(slices), int(highest), int(complete)


def completion(directory: IndexDirectory) -> tuple[np.ndarray, np.ndarray]:
    """Every slice id and whether its series is complete, read in one statement (so they agree with each other)."""
    query = select(SliceRow.id, SeriesRow.complete).join(SeriesRow, SliceRow.series_pk == SeriesRow.id).order_by(SliceRow.id)
    with Session(directory.catalog.engine) as session:
        rows = session.execute(query).all()
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([bool(r[1]) for r in rows], dtype=bool)


def slice_ids(directory: IndexDirectory, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Catalog ids of slices named by (path, slice_index), as search results and qc reports name them."""
    wanted = sorted(set(keys))
    found: dict[tuple[str, int], int] = {}
    with Session(directory.catalog.engine) as session:
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            condition = or_(*(and_(SliceRow.path == path, SliceRow.slice_index == index) for path, index in chunk))
            for i, path, index in session.execute(select(SliceRow.id, SliceRow.path, SliceRow.slice_index).where(condition)):
                found.setdefault((path, index), i)
    return found


def patient_series(directory: IndexDirectory, patient_id: str) -> list[dict[str, Any]]:
    """A patient's series (ordered by series, then slice) with every slice's id, index, path and predicted α."""
    columns = (SliceRow.series_pk, SliceRow.id, SliceRow.series_id, SliceRow.study_id, SliceRow.modality, SliceRow.slice_index, SliceRow.path, SliceRow.alpha)
    query = select(*columns).where(SliceRow.patient_id == patient_id).order_by(SliceRow.series_pk, SliceRow.slice_index)
    series: dict[int, dict[str, Any]] = {}
    with Session(directory.catalog.engine) as session:
        for owner, i, series_id, study_id, modality, index, path, alpha in session.execute(query):
            entry = series.setdefault(owner, {"series_id": series_id, "study_id": study_id, "modality": modality, "slices": []})
            entry["slices"].append({"id": i, "slice_index": index, "path": path, "alpha": round(float(alpha), 4)})
    for entry in series.values():
        entry["n_slices"] = len(entry["slices"])
        entry["max_alpha"] = max(s["alpha"] for s in entry["slices"])
    return list(series.values())
