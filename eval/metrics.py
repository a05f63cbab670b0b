"""Retrieval and distortion-tracking figures: mAP, Spearman with α, movement ratio, benign/malignant AUC, bootstrap CIs.

Every function takes distances (lower = closer; turn a baseline's scores into distances with
`Baseline.distance`) so the learned metric and all baselines are judged by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from retrieval import TAU


def average_precision(distances: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,) average precision of each query's ranking by ascending distance, ties treated as sklearn does.

    Equal distances form one threshold, so AP = Σ over distinct distances of (ΔR) · P at that distance,
    exactly sklearn.metrics.average_precision_score(relevant, −distance). Queries with nothing relevant get NaN.
    """
    distances, relevant = np.atleast_2d(np.asarray(distances, dtype=np.float64)), np.atleast_2d(np.asarray(relevant, dtype=bool))
    if distances.shape != relevant.shape:
        raise ValueError(f"distances {distances.shape} and relevance {relevant.shape} differ in shape")
    if not np.isfinite(distances).all():
        raise ValueError("distances contain NaN or infinite values")
    order = np.argsort(distances, axis=1, kind="stable")
    ranked = np.take_along_axis(distances, order, axis=1)
    hits = np.cumsum(np.take_along_axis(relevant, order, axis=1), axis=1)
    last_of_tie = np.ones_like(ranked, dtype=bool)
    last_of_tie[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    hits_at_end = np.where(last_of_tie, hits, 0)
    before = np.zeros_like(hits)
    before[:, 1:] = np.maximum.accumulate(hits_at_end, axis=1)[:, :-1]  # hits up to the previous tie group
    precision = hits / np.arange(1, ranked.shape[1] + 1)
    gained = np.where(last_of_tie, hits - before, 0)
    total = hits[:, -1].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (gained * precision).sum(1) / total, np.nan)


def mean_average_precision(distances: np.ndarray, relevant: np.ndarray) -> float:
    """Mean of the per-query average precisions, over queries with at least one relevant item."""
    return float(np.nanmean(average_precision(distances, relevant)))


def spearman(distances: np.ndarray, alphas: np.ndarray) -> float:
    """Spearman rank correlation of pair distances d(x, D_α(x)) with α (ties averaged); 1 = perfect tracking."""
    return float(stats.spearmanr(np.asarray(distances, dtype=np.float64), np.asarray(alphas, dtype=np.float64)).statistic)


def movement_ratio(distortion: np.ndarray, identity: np.ndarray) -> float:
    """Mean distortion movement d(x, D_α(x)) over mean identity movement (distance between different patients)."""
    identity_mean = float(np.mean(identity))
    if identity_mean <= 0:
        raise ValueError(f"mean identity distance must be positive, got {identity_mean}")
    return float(np.mean(distortion)) / identity_mean


def benign_malignant_auc(distances: np.ndarray, alphas: np.ndarray, tau: float = TAU) -> float:
    """ROC AUC of pair distance separating malignant (α > τ) from benign (α ≤ τ) distortions."""
    malignant = np.asarray(alphas, dtype=np.float64) > tau
    if malignant.all() or not malignant.any():
        raise ValueError(f"need pairs on both sides of τ = {tau} to compute an AUC")
    return float(roc_auc_score(malignant, np.asarray(distances, dtype=np.float64)))


@dataclass(frozen=True)
class Interval:
    """A statistic on all the data with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    patients: Sequence[str] | np.ndarray,
    resamples: int = 100,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile CI of `statistic(rows)` when whole patients are resampled with replacement.

    `patients` names the patient of every row (query, pair, …); `statistic` receives the row indices of
    one resample (a patient drawn twice contributes its rows twice) and returns a float. Resamples where
    the statistic is undefined (NaN, or ValueError such as an AUC with one class) are left out.
    """
    labels = np.asarray(patients)
    names, groups = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(groups == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(names), size=len(names))
        try:
            values.append(statistic(np.concatenate([members[i] for i in drawn])))
        except ValueError:
            continue
    tail = (1.0 - confidence) / 2 * 100
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    estimate = float(statistic(np.arange(len(labels))))
    if finite.size == 0:
        return Interval(estimate, np.nan, np.nan)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))
