"""The benchmark's figures from per-query records, each with a 95% bootstrap interval over patients.

One function computes a method's figures on any subset of the queries, so the whole run, each dataset, each
modality and a pool of several runs are all summarised by the same code. Ranking figures (mAP, P@1, MAP@R,
R-precision) are means over queries; retention is a protocol's mAP over the clean-query, clean-gallery mAP
(the query protocol at α = 0), with both means taken on the same bootstrap draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from eval.metrics import RANKING, benign_malignant_auc, bootstrap_ci, bootstrap_means, movement_ratio, percentile_bounds, spearman
from eval.records import PROTOCOLS, Records
from retrieval import BETA

CONFIDENCE = 0.95


def finite(value: float | None) -> float | None:
    """A float for JSON, None where it is undefined (NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _bounds(replicates: np.ndarray) -> list[list[float | None]]:
    """[low, high] per line of (K, R) replicates."""
    low, high = percentile_bounds(replicates, CONFIDENCE)
    return [[finite(a), finite(b)] for a, b in zip(low, high)]


def interval(statistic: Callable[[np.ndarray], float], labels: np.ndarray, resamples: int, seed: int) -> tuple[float | None, list[float | None]]:
    """Estimate on all rows and its bootstrap interval over patients; (None, [None, None]) where undefined."""
    try:
        result = bootstrap_ci(statistic, labels, resamples, seed, CONFIDENCE)
    except ValueError:  # the statistic is undefined on the full data, e.g. an AUC without both classes
        return None, [None, None]
    return finite(result.estimate), [finite(result.low), finite(result.high)]


def protocol_figures(block: dict[str, np.ndarray], reference: np.ndarray, patients: np.ndarray, resamples: int, seed: int,
                     extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per level: mean of each ranking figure (and of `extra` arrays) with intervals, and retention = mAP / mean(reference)."""
    arrays = {**{key: block[key] for key in RANKING}, **(extra or {})}
    names = list(arrays)
    stacked = np.concatenate([np.atleast_2d(arrays[n]) for n in names] + [reference[None]])
    estimate, replicates = bootstrap_means(stacked, patients, resamples, seed)
    levels = np.atleast_2d(block["ap"]).shape[0]
    figures: dict[str, Any] = {}
    ci: dict[str, Any] = {}
    for i, name in enumerate(names):
        rows = slice(i * levels, (i + 1) * levels)
        figures["map" if name == "ap" else name] = [finite(v) for v in estimate[rows]]
        ci["map" if name == "ap" else name] = _bounds(replicates[rows])
    with np.errstate(invalid="ignore", divide="ignore"):
        figures["retention"] = [finite(v) for v in estimate[:levels] / estimate[-1]]
        ci["retention"] = _bounds(replicates[:levels] / replicates[-1])
    return {**figures, "ci": ci}


def summarise(records: Records, name: str, rows: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """A method's figures on the queries `rows`: each protocol per level, distortion tracking, and â for the learned metric."""
    m = records.methods[name]
    patients = records.queries["patient"][rows]
    reference = m["query"]["ap"][0, rows]
    figures: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        block = {key: m[protocol][key][:, rows] for key in RANKING}
        extra = {"distance": m["track"][:, rows]} if protocol == "query" else None
        figures[protocol] = protocol_figures(block, reference, patients, resamples, seed, extra)
    track = m["track"][:, rows]
    steps, count = track.shape
    pair_alpha = np.repeat(np.asarray(records.alphas, dtype=np.float64), count)
    pair_patients = np.tile(patients, steps)
    pair_distance = track.ravel()
    identity = m["identity"][rows]
    movement = np.concatenate([pair_distance, identity])
    is_pair = np.arange(len(movement)) < len(pair_distance)
    ci: dict[str, Any] = {}

    def add(key: str, statistic: Callable[[np.ndarray], float], labels: np.ndarray) -> None:
        figures[key], ci[key] = interval(statistic, labels, resamples, seed)

    add("identity_distance", lambda r: float(np.nanmean(identity[r])), patients)
    add("spearman", lambda r: spearman(pair_distance[r], pair_alpha[r]), pair_patients)
    add("ratio", lambda r: movement_ratio(movement[r][is_pair[r]], movement[r][~is_pair[r]]), np.concatenate([pair_patients, patients]))
    add("auc", lambda r: benign_malignant_auc(pair_distance[r], pair_alpha[r]), pair_patients)
    if "alpha_hat" in m:
        alpha_hat = m["alpha_hat"][:, rows].ravel()
        add("alpha_spearman", lambda r: spearman(alpha_hat[r], pair_alpha[r]), pair_patients)
        # the learned tracking distance less its β·|Δâ| term: how far the anatomy distance search ranks by moves
        anatomy = (track - BETA * np.abs(m["alpha_hat"][:, rows] - m["alpha_hat"][0, rows])).ravel()
        anatomy_movement = np.concatenate([anatomy, identity])
        add("ratio_anatomy", lambda r: movement_ratio(anatomy_movement[r][is_pair[r]], anatomy_movement[r][~is_pair[r]]),
            np.concatenate([pair_patients, patients]))
    figures["ci"] = ci
    return figures


def breakdown(records: Records, key: str, resamples: int, seed: int) -> dict[str, Any]:
    """Every method's figures per value of a query field ('dataset' or 'modality'), with query and patient counts."""
    values = records.queries[key]
    groups: dict[str, Any] = {}
    for value in sorted(set(values.tolist())):
        rows = np.flatnonzero(values == value)
        groups[value or "(none)"] = {"queries": len(rows), "patients": int(len(np.unique(records.queries["patient"][rows]))),
                                     "methods": {name: summarise(records, name, rows, resamples, seed) for name in records.methods}}
    return groups


def calibration(records: Records, resamples: int, seed: int) -> dict[str, Any] | None:
    """The learned metric's â against the true α per modality, and the median â of clean slices per dataset."""
    learned = next((m for m in records.methods.values() if "alpha_hat" in m), None)
    if learned is None:
        return None
    alphas = np.asarray(records.alphas, dtype=np.float64)
    by_modality: dict[str, Any] = {}
    gallery = records.gallery
    for modality in sorted(set(records.queries["modality"].tolist())):
        rows = np.flatnonzero(records.queries["modality"] == modality)
        alpha_hat = learned["alpha_hat"][:, rows]
        estimate, replicates = bootstrap_means(alpha_hat, records.queries["patient"][rows], resamples, seed)
        pair_alpha = np.repeat(alphas, len(rows))
        entry: dict[str, Any] = {"queries": len(rows), "mean_alpha_hat": [finite(v) for v in estimate],
                                 "ci": {"mean_alpha_hat": _bounds(replicates)}}
        entry["spearman"], entry["ci"]["spearman"] = interval(lambda r: spearman(alpha_hat.ravel()[r], pair_alpha[r]),
                                                              np.tile(records.queries["patient"][rows], len(alphas)), resamples, seed)
        if "alpha_hat_mixed" in gallery:
            mixed = gallery["modality"] == modality
            entry["gallery_slices"] = int(mixed.sum())
            entry["spearman_mixed_gallery"] = finite(spearman(gallery["alpha_hat_mixed"][mixed], gallery["mixed_alpha"][mixed])) if mixed.sum() > 2 else None
        by_modality[modality] = entry
    clean_datasets = np.concatenate([records.queries["dataset"], gallery.get("dataset", np.empty(0, dtype=str))])
    clean_alpha = np.concatenate([learned["alpha_hat"][0], gallery.get("alpha_hat_clean", np.empty(0))])
    by_dataset = {(d or "(none)"): {"slices": int((clean_datasets == d).sum()), "median_alpha_hat": finite(float(np.median(clean_alpha[clean_datasets == d])))}
                  for d in sorted(set(clean_datasets.tolist()))}
    return {"by_modality": by_modality, "clean_by_dataset": by_dataset}


def all_figures(records: Records, resamples: int, seed: int) -> dict[str, Any]:
    """Overall figures per method, the per-dataset and per-modality breakdowns, and the â calibration."""
    everything = np.arange(len(records))
    return {"methods": {name: summarise(records, name, everything, resamples, seed) for name in records.methods},
            "breakdown": {key: breakdown(records, key, resamples, seed) for key in ("dataset", "modality")},
            "calibration": calibration(records, resamples, seed)}
