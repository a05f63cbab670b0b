"""One method's per-query measurements turned into the benchmark's figures, each with a bootstrap CI over patients."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from eval.metrics import benign_malignant_auc, bootstrap_ci, movement_ratio, spearman


@dataclass(frozen=True)
class MethodRun:
    """What a method measured: per-α, per-query AP and pair distance, per-query identity distance, and its time."""

    ap: np.ndarray  # (A, Q) average precision of each query at each α
    track: np.ndarray  # (A, Q) tracking distance d(x, D_α(x))
    identity: np.ndarray  # (Q,) mean tracking distance from the clean query to gallery slices of other patients
    seconds_per_query: float  # encoding a query and ranking the whole gallery, averaged over queries and α
    gallery_seconds: float  # encoding the gallery once


def finite(value: float) -> float | None:
    """A float for JSON, None where it is undefined (NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def interval(statistic: Callable[[np.ndarray], float], labels: np.ndarray, resamples: int, seed: int) -> tuple[float | None, list[float | None]]:
    """Estimate on all rows and its 95% bootstrap interval over patients; (None, [None, None]) where undefined."""
    try:
        result = bootstrap_ci(statistic, labels, resamples, seed)
    except ValueError:  # the statistic is undefined on the full data, e.g. an AUC without both classes
        return None, [None, None]
    return finite(result.estimate), [finite(result.low), finite(result.high)]


def summarise(run: MethodRun, alphas: Sequence[float], patients: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """mAP, retention and mean pair distance per α, identity distance, Spearman, movement ratio and AUC, with CIs."""
    steps, count = run.ap.shape
    pair_alpha = np.repeat(np.asarray(alphas, dtype=np.float64), count)
    pair_patients = np.tile(patients, steps)
    pair_distance = run.track.ravel()
    movement = np.concatenate([pair_distance, run.identity])
    is_pair = np.arange(len(movement)) < len(pair_distance)
    figures: dict[str, Any] = {}
    ci: dict[str, Any] = {}

    def add(name: str, statistic: Callable[[np.ndarray], float], labels: np.ndarray = patients) -> None:
        figures[name], ci[name] = interval(statistic, labels, resamples, seed)

    def add_per_alpha(name: str, statistic: Callable[[int, np.ndarray], float]) -> None:
        pairs = [interval(lambda rows, s=s: statistic(s, rows), patients, resamples, seed) for s in range(steps)]
        figures[name], ci[name] = [p[0] for p in pairs], [p[1] for p in pairs]

    add_per_alpha("map", lambda s, rows: float(np.nanmean(run.ap[s, rows])))
    add_per_alpha("retention", lambda s, rows: float(np.nanmean(run.ap[s, rows]) / np.nanmean(run.ap[0, rows])))
    add_per_alpha("distance", lambda s, rows: float(np.mean(run.track[s, rows])))
    add("identity_distance", lambda rows: float(np.mean(run.identity[rows])))
    add("spearman", lambda rows: spearman(pair_distance[rows], pair_alpha[rows]), pair_patients)
    add("ratio", lambda rows: movement_ratio(movement[rows][is_pair[rows]], movement[rows][~is_pair[rows]]),
        np.concatenate([pair_patients, patients]))
    add("auc", lambda rows: benign_malignant_auc(pair_distance[rows], pair_alpha[rows]), pair_patients)
    return {**figures, "seconds_per_query": run.seconds_per_query, "gallery_seconds": run.gallery_seconds, "ci": ci}
