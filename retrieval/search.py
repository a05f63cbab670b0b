"""Search an index: query → embed → FAISS (α/modality/patient filters inside the search) → catalog rows → ranking.

Distances are anatomical: d = 0.5 · (1 − cos) between anatomy embeddings, in [0, 1].
A patient's distance is that of its best-matching slice (over every query slice for a series query).
A series' (or study's) distance, with `--by series|study`, is the mean over the query's slices of each one's
best match in it: every query slice votes, so one bad slice moves it by 1/n, and two series that share one
look-alike slice do not tie with the series that matches throughout. The query's own series is never a result.
`--same-patient` names the patient of the best series and ranks that patient's series (or studies) only.
Filters go into FAISS as an id selector, and the search widens until k patients (or k slices)
come back or no eligible slice is left, so k results come back whenever k eligible exist.
With an IVF-PQ index the shortlist is re-scored with the exact vectors the catalog keeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from retrieval import TAU
from retrieval.embeddings import best_cosine, orientations

if TYPE_CHECKING:
    from indexer.catalog import SliceInfo
    from indexer.directory import IndexDirectory
    from retrieval.io import Identity, Limits
    from retrieval.metric import DistortionAwareMetric

BY = ("patient", "slice")
GROUPED = ("series", "study")  # kept apart from BY, which `retrieval serve` offers: its page pseudonymises patient ids, not series ids
CANDIDATES = 64  # nearest slices per query slice that propose series (or studies) to score exactly
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


@dataclass(frozen=True)
class SlicePair(SliceMatch):
    """A catalog slice and the query slice it is the best match of (its slice index in the query): the evidence for a score."""

    query_slice: int


@dataclass
class GroupMatch:
    """A ranked series (or study): mean over query slices of each one's best distance in it, its slices and mean â."""

    patient_id: str
    study_id: str | None
    series_id: str | None  # None for a study
    modality: str
    distance: float
    n_slices: int  # its slices that were searched (all of them unless --max-alpha or --modality leave some out)
    alpha: float  # their mean predicted α
    n_series: int
    slices: list[SlicePair] = field(default_factory=list)


@dataclass
class SearchResult:
    """The query (path, slices used, mean predicted α) and the ranked results, best first."""

    path: str
    n_slices: int
    alpha: float
    results: list[PatientMatch] | list[GroupMatch]
    same_patient: dict[str, Any] | None = None  # --same-patient: the patient found, its distance, the runner-up's

    @property
    def distorted(self) -> bool:
        """True when the query itself looks distorted beyond the benign threshold TAU."""
        return self.alpha > TAU

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape scripts rely on: {"query": {...}, "results": [{"patient_id", "distance", "slices": [...]}]}."""
        out = {
            "query": {"path": self.path, "n_slices": self.n_slices, "alpha": round(self.alpha, 4), "tau": TAU, "distorted": self.distorted},
            "results": [asdict(r) for r in self.results],
        }
        if self.same_patient is not None:
            out["same_patient"] = self.same_patient
        return out


def rank(
    directory: "IndexDirectory",
    anatomy: np.ndarray,
    k: int = 10,
    by: str = "patient",
    max_alpha: float | None = None,
    modality: str | None = None,
    exclude_patients: Sequence[str] = (),
) -> list[PatientMatch]:
    """Rank catalog patients (or slices) for one or more query anatomy vectors, filters applied inside FAISS.

    Each query vector searches under the flips/turns of its layout (when the index's checkpoint has one) and every
    catalog slice keeps its best distance, so a flipped or turned query finds what the original finds.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)} (series and study: rank_groups), got {by!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    filtered = max_alpha is not None or modality is not None or bool(exclude_patients)
    allowed = directory.catalog.eligible_ids(max_alpha, modality, exclude_patients) if filtered else None
    eligible = len(allowed) if allowed is not None else len(directory.store)
    if not eligible:
        return []
    fetch = min(eligible, k * (WIDEN if by == "patient" else 1))
    views = orientations(anatomy, directory.layout)
    while True:
        scores, ids = directory.store.search_views(views, fetch, allowed, vectors_of=lambda wanted: directory.catalog.vectors(wanted, directory.store.dim))
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


def group_key(row: "SliceInfo", by: str) -> tuple[str, str]:
    """The series (patient, series id) or study (patient, study id) a catalog row belongs to; a series without a study is its own."""
    if by == "study" and row.study_id:
        return row.patient_id, "study:" + row.study_id
    return row.patient_id, "series:" + row.series_id


def best_in_groups(query: np.ndarray, vectors: np.ndarray, groups: Sequence[np.ndarray], layout: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query row and group (column indices into `vectors`): the smallest distance d = 0.5 · (1 − cos) and its
    column (cos the best over the query's flips/turns when the vectors end in a `layout`)."""
    distances = np.clip(0.5 * (1.0 - best_cosine(query, vectors, layout)), 0.0, 1.0)
    best = np.empty((len(query), len(groups)), dtype=np.float32)
    where = np.empty((len(query), len(groups)), dtype=np.int64)
    for g, columns in enumerate(groups):
        part = distances[:, columns]
        best[:, g], where[:, g] = part.min(axis=1), columns[part.argmin(axis=1)]
    return best, where


def _candidates(directory: "IndexDirectory", anatomy: np.ndarray, k: int, by: str, allowed: np.ndarray | None, keep: Callable[["SliceInfo"], bool]) -> list["SliceInfo"]:
    """Every searchable slice of the series (or studies) holding one of each query slice's nearest slices, widened until k of them."""
    catalog = directory.catalog
    eligible = len(allowed) if allowed is not None else len(directory.store)
    fetch = min(eligible, max(CANDIDATES, k * WIDEN))
    views = orientations(anatomy, directory.layout)
    while True:
        _, ids = directory.store.search_views(views, fetch, allowed, vectors_of=lambda wanted: catalog.vectors(wanted, directory.store.dim))
        hits = [row for row in catalog.slices({int(i) for i in ids.ravel() if i >= 0}).values() if keep(row)]
        keys = {group_key(row, by) for row in hits}
        if len(keys) >= k or fetch >= eligible:
            break
        fetch = min(eligible, fetch * WIDEN)
    members = catalog.members("series_id", {row.series_id for row in hits})
    if by == "study":
        members += catalog.members("study_id", {row.study_id for row in hits if row.study_id})
    return list({row.id: row for row in members if group_key(row, by) in keys and keep(row)}.values())


def rank_groups(
    directory: "IndexDirectory",
    anatomy: np.ndarray,
    k: int = 10,
    by: str = "series",
    max_alpha: float | None = None,
    modality: str | None = None,
    exclude_patients: Sequence[str] = (),
    own: Sequence[Any] = (),
    patient: str | None = None,
) -> list[GroupMatch]:
    """Rank series (or studies) by the mean over query slices of each one's best match; the `own` slices' series never count.

    `patient` ranks that patient's series (or studies) only. Candidates come from FAISS (each query slice's
    nearest slices propose their series); the score is then exact over every searchable slice of a candidate.
    """
    if by not in GROUPED:
        raise ValueError(f"by must be series or study, got {by!r}")
    catalog = directory.catalog
    filtered = max_alpha is not None or modality is not None or bool(exclude_patients)
    allowed = catalog.eligible_ids(max_alpha, modality, exclude_patients) if filtered else None
    is_own, names = own_series(own)
    mine = np.asarray(sorted(r.id for r in catalog.members("series_id", names) if is_own(r)), dtype=np.int64)
    if len(mine):
        allowed = np.setdiff1d(allowed if allowed is not None else catalog.ids(), mine)
    searchable = set(allowed.tolist()) if allowed is not None else None
    keep = lambda row: (searchable is None or row.id in searchable) and not is_own(row)  # noqa: E731
    if (searchable is not None and not searchable) or not len(directory.store):
        return []
    rows = [r for r in catalog.members("patient_id", [patient]) if keep(r)] if patient is not None else _candidates(directory, anatomy, k, by, allowed, keep)
    members: dict[tuple[str, str], list[int]] = {}
    for column, row in enumerate(rows):
        members.setdefault(group_key(row, by), []).append(column)
    groups = [np.asarray(columns) for columns in members.values()]
    best, where = best_in_groups(anatomy, catalog.vectors([r.id for r in rows], directory.store.dim), groups, directory.layout)
    results = []
    for g, columns in enumerate(groups):
        inside = [rows[c] for c in columns]
        pairs = [SlicePair(rows[where[q, g]].path, rows[where[q, g]].slice_index, float(best[q, g]), rows[where[q, g]].alpha,
                           rows[where[q, g]].modality, rows[where[q, g]].series_id, int(q))
                 for q in np.argsort(best[:, g], kind="stable")[:SLICES_PER_PATIENT]]
        results.append(GroupMatch(inside[0].patient_id, inside[0].study_id, inside[0].series_id if by == "series" else None,
                                  ",".join(sorted({r.modality for r in inside})), float(best[:, g].mean()), len(inside),
                                  float(np.mean([r.alpha for r in inside])), len({r.series_id for r in inside}), pairs))
    results.sort(key=lambda m: (m.distance, m.patient_id, m.study_id or "", m.series_id or ""))
    return results[:k]


def own_series(slices: Sequence[Any]) -> tuple[Callable[["SliceInfo"], bool], set[str]]:
    """A test for catalog rows of the query's own series (the same series id, or the same file on disk), and the ids to look up."""
    import os

    from retrieval.io import is_remote

    files = {os.path.realpath(s.path) for s in slices if not is_remote(s.path)}
    ids = {s.series_id for s in slices}
    return (lambda row: row.series_id in ids or (not is_remote(row.path) and os.path.realpath(row.path) in files)), ids | files


def query_embeddings(metric: "DistortionAwareMetric", path: str | Path, identity: "Identity", slice_index: int | None = None,  # type: ignore[no-untyped-def]
                     limits: "Limits | None" = None):
    """Embed a query file or series: every non-empty slice (or the one `slice_index`); returns the embeddings and those slices.

    The query is read in a reader process under `limits`: a file that crashes a C library is refused with the reason, not the caller."""
    from retrieval.io import read_path
    from retrieval.preprocess import is_empty, prepare_slice

    slices = read_path(path, identity, limits=limits, isolated=True)
    if slice_index is not None:
        chosen = [s for s in slices if s.index == slice_index]
        if not chosen:
            raise ValueError(f"{path}: no slice {slice_index} (it has slices 0..{len(slices) - 1})")
        slices = chosen
    bad = [s for s in slices if s.modality not in ("CT", "MR")]
    if bad:
        raise ValueError(f"{bad[0].path}: modality {bad[0].modality} is not CT or MR; say which with --modality")
    kept = [s for s in slices if not is_empty(s.pixels, s.modality)] or slices
    inputs = [prepare_slice(s.pixels, s.modality, metric.size, s.spacing) for s in kept]
    return metric.embed([array for array, _ in inputs], factors=[factor for _, factor in inputs]), kept


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
    same_patient: bool = False,
    limits: "Limits | None" = None,
) -> SearchResult:
    """Search the index with a file, volume or series folder; results aggregate over its slices.

    `same_patient` (with by series or study): the other series or studies of the patient whose series matches best.
    `limits`: the reading limits of the query file (as `scan`'s options; the defaults without).
    """
    from retrieval.io import DicomWeb

    embedded, kept = query_embeddings(metric, path, identity, slice_index, limits)
    name, alpha = path.name if isinstance(path, DicomWeb) else str(path), float(np.mean(embedded.alpha))
    result = partial(SearchResult, name, len(kept), alpha)
    if by not in GROUPED:
        if same_patient:
            raise ValueError("--same-patient ranks series or studies: use it with --by series or --by study")
        return result(rank(directory, embedded.anatomy, k, by, max_alpha, modality, exclude_patients))
    filters = {"max_alpha": max_alpha, "modality": modality, "exclude_patients": exclude_patients, "own": kept}
    if not same_patient:
        return result(_numbered(rank_groups(directory, embedded.anatomy, k, by, **filters), kept))
    top = rank_groups(directory, embedded.anatomy, 2 * k, by, **filters)
    if not top:
        return result([], {"patient_id": None, "distance": None, "runner_up": None})
    runner_up = next((m for m in top if m.patient_id != top[0].patient_id), None)
    found = {"patient_id": top[0].patient_id, "distance": top[0].distance,
             "runner_up": {"patient_id": runner_up.patient_id, "distance": runner_up.distance} if runner_up else None}
    return result(_numbered(rank_groups(directory, embedded.anatomy, k, by, patient=top[0].patient_id, **filters), kept), found)


def _numbered(results: list[GroupMatch], kept: Sequence[Any]) -> list[GroupMatch]:
    """Evidence pairs name the query slice by its own index in the query (not its row among the embedded slices)."""
    from dataclasses import replace

    for match in results:
        match.slices = [replace(pair, query_slice=kept[pair.query_slice].index) for pair in match.slices]
    return results


def print_result(result: SearchResult) -> None:
    """Human-readable ranking on stdout (the α warning goes to stderr)."""
    import sys

    print(f"query {result.path}: {result.n_slices} slice(s), predicted α {result.alpha:.3f}")
    if result.distorted:
        print(f"warning: the query's predicted α {result.alpha:.3f} is above TAU = {TAU}: it looks distorted, matches may be unreliable", file=sys.stderr)
    if not result.results:
        print("no eligible slices in the index")
    if result.same_patient and result.same_patient["patient_id"]:
        found, other = result.same_patient, result.same_patient.get("runner_up")
        print(f"same patient: {found['patient_id']} (distance {found['distance']:.4f}"
              + (f"; next patient {other['patient_id']} at {other['distance']:.4f})" if other else ")"))
    for rank_, match in enumerate(result.results, start=1):
        if isinstance(match, GroupMatch):
            what = (f"series {match.series_id}" if match.series_id else f"study {match.study_id} ({match.n_series} series)" if match.study_id
                    else f"series {match.slices[0].series_id} (no study id: its own study)")
            print(f"{rank_:>3}. {match.patient_id}  {what}  distance {match.distance:.4f}  {match.n_slices} slices  mean α {match.alpha:.3f}")
        else:
            print(f"{rank_:>3}. {match.patient_id}  distance {match.distance:.4f}")
        for s in match.slices:
            query = f"  ← query slice {s.query_slice}" if isinstance(s, SlicePair) else ""
            volume = s.series_id[len(s.path):] if s.series_id.startswith(s.path + "#") else ""  # "#t3": which volume of a 4D file
            print(f"       {s.distance:.4f}  α {s.alpha:.3f}  {s.modality}  {s.path}{volume} [slice {s.slice_index}]{query}")
