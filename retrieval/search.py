"""Search an index: query → embed → FAISS (α/modality/patient filters inside the search) → catalog rows → ranking.

Distances are anatomical: d = 0.5 · (1 − cos) between anatomy embeddings, in [0, 1].
A patient's distance is that of its best-matching slice (over every query slice for a series query).
Filters go into FAISS as an id selector, and the search widens until k patients (or k slices)
come back or no eligible slice is left, so k results come back whenever k eligible exist.
With an IVF-PQ index the shortlist is re-scored with the exact vectors the catalog keeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from retrieval import TAU

if TYPE_CHECKING:
    from indexer.directory import IndexDirectory
    from retrieval.io import Identity
    from retrieval.metric import DistortionAwareMetric

BY = ("patient", "slice")
SLICES_PER_PATIENT = 3  # best-matching slices shown per patient
WIDEN = 4  # over-fetch factor, and growth factor while too few results came back


@dataclass(frozen=True)
class SliceMatch:
    """One matching catalog slice."""

    path: str
    slice_index: int
    distance: float
    alpha: float
    modality: str
    series_id: str


@dataclass
class PatientMatch:
    """A ranked patient with its best-matching slices (a single slice with --by slice)."""

    patient_id: str
    distance: float
    slices: list[SliceMatch] = field(default_factory=list)


@dataclass
class SearchResult:
    """The query (path, slices used, mean predicted α) and the ranked results, best first."""

    path: str
    n_slices: int
    alpha: float
    results: list[PatientMatch]

    @property
    def distorted(self) -> bool:
        """True when the query itself looks distorted beyond the benign threshold TAU."""
        return self.alpha > TAU

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape scripts rely on: {"query": {...}, "results": [{"patient_id", "distance", "slices": [...]}]}."""
        return {
            "query": {"path": self.path, "n_slices": self.n_slices, "alpha": round(self.alpha, 4), "tau": TAU, "distorted": self.distorted},
            "results": [asdict(r) for r in self.results],
        }


def rank(
    directory: "IndexDirectory",
    anatomy: np.ndarray,
    k: int = 10,
    by: str = "patient",
    max_alpha: float | None = None,
    modality: str | None = None,
    exclude_patients: Sequence[str] = (),
) -> list[PatientMatch]:
    """Rank catalog patients (or slices) for one or more query anatomy vectors, filters applied inside FAISS."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    filtered = max_alpha is not None or modality is not None or bool(exclude_patients)
    allowed = directory.catalog.eligible_ids(max_alpha, modality, exclude_patients) if filtered else None
    eligible = len(allowed) if allowed is not None else len(directory.store)
    if not eligible:
        return []
    fetch = min(eligible, k * (WIDEN if by == "patient" else 1))
    while True:
        scores, ids = directory.store.search(anatomy, fetch, allowed, vectors_of=lambda wanted: directory.catalog.vectors(wanted, directory.store.dim))
        best: dict[int, float] = {}
        for score, i in zip(scores.ravel().tolist(), ids.ravel().tolist()):
            if i >= 0:
                best[i] = min(best.get(i, 1.0), float(np.clip(0.5 * (1.0 - score), 0.0, 1.0)))
        results = _group(directory, best, by)
        if len(results) >= k or fetch >= eligible:
            return results[:k]
        fetch = min(eligible, fetch * WIDEN)


def _group(directory: "IndexDirectory", best: dict[int, float], by: str) -> list[PatientMatch]:
    """Catalog rows for the hits, grouped per patient (or one per slice), best first."""
    rows = directory.catalog.slices(best)
    order = sorted((i for i in best if i in rows), key=lambda i: (best[i], i))
    results: dict[Any, PatientMatch] = {}
    for i in order:
        row = rows[i]
        match = SliceMatch(row.path, row.slice_index, best[i], row.alpha, row.modality, row.series_id)
        group = results.setdefault(row.patient_id if by == "patient" else i, PatientMatch(row.patient_id, match.distance))
        if len(group.slices) < (SLICES_PER_PATIENT if by == "patient" else 1):
            group.slices.append(match)
    return list(results.values())


def query_embeddings(metric: "DistortionAwareMetric", path: str | Path, identity: "Identity", slice_index: int | None = None):  # type: ignore[no-untyped-def]
    """Embed a query file or series: every non-empty slice (or the one `slice_index`), with its modality."""
    from retrieval.io import read_path
    from retrieval.preprocess import is_empty

    slices = read_path(path, identity)
    if slice_index is not None:
        chosen = [s for s in slices if s.index == slice_index]
        if not chosen:
            raise ValueError(f"{path}: no slice {slice_index} (it has slices 0..{len(slices) - 1})")
        slices = chosen
    bad = [s for s in slices if s.modality not in ("CT", "MR")]
    if bad:
        raise ValueError(f"{bad[0].path}: modality {bad[0].modality} is not CT or MR; say which with --modality")
    kept = [s for s in slices if not is_empty(s.pixels, s.modality)] or slices
    return metric.embed([metric.preprocess(s.pixels, s.modality, s.spacing) for s in kept]), len(kept)


def search_path(
    directory: "IndexDirectory",
    metric: "DistortionAwareMetric",
    path: str | Path,
    identity: "Identity",
    *,
    slice_index: int | None = None,
    k: int = 10,
    by: str = "patient",
    max_alpha: float | None = None,
    modality: str | None = None,
    exclude_patients: Sequence[str] = (),
) -> SearchResult:
    """Search the index with a file, volume or series folder; results aggregate over its slices."""
    embedded, n = query_embeddings(metric, path, identity, slice_index)
    results = rank(directory, embedded.anatomy, k, by, max_alpha, modality, exclude_patients)
    return SearchResult(str(path), n, float(np.mean(embedded.alpha)), results)


def print_result(result: SearchResult) -> None:
    """Human-readable ranking on stdout (the α warning goes to stderr)."""
    import sys

    print(f"query {result.path}: {result.n_slices} slice(s), predicted α {result.alpha:.3f}")
    if result.distorted:
        print(f"warning: the query's predicted α {result.alpha:.3f} is above TAU = {TAU}: it looks distorted, matches may be unreliable", file=sys.stderr)
    if not result.results:
        print("no eligible slices in the index")
    for rank_, match in enumerate(result.results, start=1):
        print(f"{rank_:>3}. {match.patient_id}  distance {match.distance:.4f}")
        for s in match.slices:
            print(f"       {s.distance:.4f}  α {s.alpha:.3f}  {s.modality}  {s.path} [slice {s.slice_index}]")
