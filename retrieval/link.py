"""`retrieval link`: patients (or series) in one or two indexes that look like the same subject — the leakage check for merged datasets.

A series is the unit. Two series' distance is the symmetric Chamfer distance of their slices' anatomy embeddings: the
mean over A's slices of each one's best match in B (d = 0.5 · (1 − cos), as `search --by series` scores), averaged
with the same from B to A; only series of the same modality are compared. Two patients' distance is that of their
closest pair of series, and the best slice pairs of that pair are the evidence.

The threshold is calibrated within each index on what the ids say: series pairs of one patient id (different series)
are the positives, pairs of different ids the negatives; it is the largest distance below which at most `false_rate`
of the negatives fall (pairs link when their distance is below it). Its false-match rate and recall on those pairs are
reported. With `ignore_ids` every series pair is a candidate, whatever its ids (a merged dataset under new names):
the ids then only grade the result. Files stored twice (the same SHA-256, or the same DICOM instance) are reported
as duplicates whatever the ids. Exact: O(N_A · N_B) distances, in row blocks (1,625 slices: a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from retrieval.search import best_in_groups

if TYPE_CHECKING:
    from indexer.directory import IndexDirectory

FALSE_RATE = 0.001  # default target false-match rate on different patients
EVIDENCE = 3  # best slice pairs shown per linked pair
BLOCK = 4096  # query rows per distance block


@dataclass
class Side:
    """One index as linkage sees it: slices (rows, vectors, file checksums) grouped into series."""

    name: str
    rows: list[Any]  # catalog SliceInfo, one per slice
    vectors: np.ndarray
    checksums: list[str]
    layout: int  # trailing vector columns that are a layout thumbnail (compared under its flips/turns)
    series: list[tuple[str, str, str]] = field(default_factory=list)  # (patient id, series id, modality) per series
    members: list[np.ndarray] = field(default_factory=list)  # slice rows of each series

    @classmethod
    def load(cls, directory: "IndexDirectory", name: str) -> "Side":
        """Every slice of an index with its vector and file checksum, grouped by (patient, series)."""
        catalog = directory.catalog
        ids = catalog.ids()
        info = catalog.slices(ids.tolist())
        checksum = dict(catalog.table(["id", "file_checksum"]))
        side = cls(name, [info[int(i)] for i in ids], catalog.vectors(ids, directory.store.dim), [checksum[int(i)] for i in ids],
                   directory.layout)
        groups: dict[tuple[str, str, str], list[int]] = {}
        for row, item in enumerate(side.rows):
            groups.setdefault((item.patient_id, item.series_id, item.modality), []).append(row)
        side.series, side.members = list(groups), [np.asarray(rows) for rows in groups.values()]
        return side


def chamfer(a: Side, b: Side) -> np.ndarray:
    """Series × series symmetric Chamfer distances (inf across modalities)."""

    def one_way(x: Side, y: Side) -> np.ndarray:
        best = np.concatenate([best_in_groups(x.vectors[start:start + BLOCK], y.vectors, y.members, x.layout)[0] for start in range(0, len(x.rows), BLOCK)])
        return np.stack([best[rows].mean(axis=0) for rows in x.members])

    distance = 0.5 * (one_way(a, b) + one_way(b, a).T)
    modality_a, modality_b = np.array([s[2] for s in a.series]), np.array([s[2] for s in b.series])
    distance[modality_a[:, None] != modality_b[None, :]] = np.inf
    return distance


@dataclass(frozen=True)
class Calibration:
    """The threshold and what it does on the pairs the ids label."""

    threshold: float
    false_match_rate: float | None
    recall: float | None
    positives: int
    negatives: int
    target: float | None  # the false-match rate asked for (None when the threshold was given)


def labelled_pairs(side: Side, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the series pairs of one index: same patient id (different series), and different ids; same modality only."""
    upper = np.triu(np.isfinite(distance), k=1)
    patients = np.array([s[0] for s in side.series])
    same = patients[:, None] == patients[None, :]
    return distance[upper & same], distance[upper & ~same]


def calibrate(labelled: Sequence[tuple[np.ndarray, np.ndarray]], false_rate: float = FALSE_RATE, threshold: float | None = None) -> Calibration:
    """The largest threshold with at most `false_rate` of the negatives below it (or the given one), and its rates."""
    given = threshold is not None
    positives = np.concatenate([p for p, _ in labelled]) if labelled else np.zeros(0)
    negatives = np.sort(np.concatenate([n for _, n in labelled])) if labelled else np.zeros(0)
    if threshold is None:
        if not len(negatives):
            raise ValueError("cannot calibrate: no two series of different patients (and the same modality) to learn from; pass --threshold")
        allowed = int(np.floor(false_rate * len(negatives)))
        threshold = float(negatives[allowed]) if allowed < len(negatives) else float(negatives[-1]) + 1e-6
    rate = lambda values: float(np.mean(values < threshold)) if len(values) else None  # noqa: E731
    return Calibration(float(threshold), rate(negatives), rate(positives), len(positives), len(negatives), None if given else false_rate)


def evidence(a: Side, i: int, b: Side, j: int, n: int = EVIDENCE) -> list[dict[str, Any]]:
    """The n closest slice pairs of series i (of a) and j (of b)."""
    rows_a, rows_b = a.members[i], b.members[j]
    distance = np.clip(0.5 * (1.0 - a.vectors[rows_a] @ b.vectors[rows_b].T), 0.0, 1.0)
    out = []
    for flat in np.argsort(distance, axis=None, kind="stable")[:n]:
        x, y = np.unravel_index(flat, distance.shape)
        ra, rb = a.rows[rows_a[x]], b.rows[rows_b[y]]
        out.append({"a": {"path": ra.path, "slice_index": ra.slice_index}, "b": {"path": rb.path, "slice_index": rb.slice_index},
                    "distance": round(float(distance[x, y]), 6)})
    return out


def duplicates(sides: Sequence[Side]) -> list[dict[str, Any]]:
    """Files stored more than once (the same SHA-256, or the same DICOM instance over DICOMweb) across the indexes."""
    files: dict[str, dict[tuple[int, str], str]] = {}
    for k, side in enumerate(sides):
        for row, checksum in zip(side.rows, side.checksums):
            files.setdefault(checksum, {})[(k, row.path)] = row.patient_id
    return [{"checksum": checksum, "files": [{"index": sides[k].name, "path": path, "patient_id": patient} for (k, path), patient in sorted(found.items())]}
            for checksum, found in sorted(files.items(), key=lambda item: sorted(item[1])) if len(found) > 1]


def _series(side: Side, i: int) -> dict[str, Any]:
    """A series as the JSON names it."""
    patient, series, modality = side.series[i]
    return {"index": side.name, "patient_id": patient, "series_id": series, "modality": modality, "n_slices": len(side.members[i])}


def link(directories: Sequence["IndexDirectory"], names: Sequence[str], *, threshold: float | None = None, false_rate: float = FALSE_RATE,
         ignore_ids: bool = False) -> dict[str, Any]:
    """Link the patients (or, ignoring ids, the series) of one index within itself, or of two indexes across them."""
    if len(directories) not in (1, 2):
        raise ValueError(f"link takes one or two indexes, got {len(directories)}")
    hashes = {d.manifest.checkpoint_sha256 for d in directories}
    if len(hashes) > 1:
        raise ValueError(f"{names[1]}: built with another checkpoint than {names[0]}; their embeddings cannot be compared (re-index one of them)")
    sides = [Side.load(d, name) for d, name in zip(directories, names)]
    empty = [side.name for side in sides if not side.rows]
    if empty:
        raise ValueError(f"{empty[0]}: the index holds no slices to link; index an archive into it first")
    within = [chamfer(side, side) for side in sides]
    calibration = calibrate([labelled_pairs(side, d) for side, d in zip(sides, within)], false_rate, threshold)
    a, b = sides[0], sides[-1]
    distance = within[0] if len(sides) == 1 else chamfer(a, b)
    candidates = np.triu(np.isfinite(distance), k=1) if len(sides) == 1 else np.isfinite(distance)
    linked = [(float(distance[i, j]), int(i), int(j)) for i, j in np.argwhere(candidates & (distance < calibration.threshold))]
    pairs = _series_pairs(a, b, linked) if ignore_ids else _patient_pairs(a, b, linked, one_index=len(sides) == 1)
    result: dict[str, Any] = {
        "indexes": list(names), "ignore_ids": ignore_ids, "unit": "series" if ignore_ids else "patient",
        "calibration": vars(calibration), "pairs": pairs, "duplicates": duplicates(sides),
    }
    if ignore_ids:
        result["groups"] = [[_series(a, i) for i in group] for group in _groups(len(a.series), linked)] if len(sides) == 1 else []
        result["grading"] = _grade(a, b, linked, candidates)
    return result


def _series_pairs(a: Side, b: Side, linked: list[tuple[float, int, int]]) -> list[dict[str, Any]]:
    """Every linked series pair, closest first, with its evidence and whether the ids agree."""
    return [{"a": _series(a, i), "b": _series(b, j), "distance": round(d, 6), "same_id": a.series[i][0] == b.series[j][0],
             "evidence": evidence(a, i, b, j)} for d, i, j in sorted(linked)]


def _patient_pairs(a: Side, b: Side, linked: list[tuple[float, int, int]], one_index: bool) -> list[dict[str, Any]]:
    """Linked patient pairs (within one index: different ids only), each by its closest series pair."""
    best: dict[tuple[str, str], tuple[float, int, int]] = {}
    for d, i, j in sorted(linked):
        key = (a.series[i][0], b.series[j][0])
        if one_index and key[0] == key[1]:
            continue  # one patient's own series: known to be the same
        best.setdefault(key, (d, i, j))
    return [{"a": {"index": a.name, "patient_id": pa}, "b": {"index": b.name, "patient_id": pb}, "distance": round(d, 6), "same_id": pa == pb,
             "series": [_series(a, i), _series(b, j)], "evidence": evidence(a, i, b, j)} for (pa, pb), (d, i, j) in best.items()]


def _groups(n: int, linked: list[tuple[float, int, int]]) -> list[list[int]]:
    """Connected groups (two or more series) of one index's linked series: the subjects found without ids."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, i, j in linked:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))


def _grade(a: Side, b: Side, linked: list[tuple[float, int, int]], candidates: np.ndarray) -> dict[str, Any]:
    """How the id-blind series pairs agree with the ids: true and false pairs, recall, false-match rate, patients regrouped."""
    ids_a, ids_b = np.array([s[0] for s in a.series]), np.array([s[0] for s in b.series])
    same = (ids_a[:, None] == ids_b[None, :]) & candidates
    found = np.zeros_like(same)
    for _, i, j in linked:
        found[i, j] = True
    grade: dict[str, Any] = {
        "pairs_found": int(found.sum()), "true_pairs": int((found & same).sum()), "false_pairs": int((found & ~same).sum()),
        "recall": float((found & same).sum() / same.sum()) if same.sum() else None,
        "false_match_rate": float((found & ~same).sum() / (candidates & ~same).sum()) if (candidates & ~same).sum() else None,
    }
    if a is b:  # within one index: is each patient with several series one group?
        several = [p for p, n in zip(*np.unique(ids_a, return_counts=True)) if n > 1]
        groups = [set(g) for g in _groups(len(ids_a), linked)]
        whole = [p for p in several if any(set(np.flatnonzero(ids_a == p).tolist()) <= g for g in groups)]
        grade.update(patients_with_several_series=len(several), patients_regrouped=len(whole),
                     groups_mixing_patients=sum(len({ids_a[i] for i in g}) > 1 for g in groups))
    return grade
