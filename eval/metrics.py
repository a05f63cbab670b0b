"""Retrieval and distortion-tracking figures: mAP, Spearman with α, movement ratio, benign/malignant AUC, bootstrap CIs.

Every function takes distances (lower = closer; turn a baseline's scores into distances with
`Baseline.distance`) so the learned metric and all baselines are judged by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from retrieval import TAU


RANKING = ("ap", "p1", "map_r", "r_precision")  # per-query ranking figures, in results.json's per-query records


def _ranked(distances: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated inputs as (distances, relevance) sorted by ascending distance per row (stable: ties keep gallery order)."""
    distances, relevant = np.atleast_2d(np.asarray(distances, dtype=np.float64)), np.atleast_2d(np.asarray(relevant, dtype=bool))
    if distances.shape != relevant.shape:
        raise ValueError(f"distances {distances.shape} and relevance {relevant.shape} differ in shape")
    if not np.isfinite(distances).all():
        raise ValueError("distances contain NaN or infinite values")
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(relevant, order, axis=1)


def _tie_aware_ap(ranked: np.ndarray, hits_sorted: np.ndarray) -> np.ndarray:
    """AP with equal distances as one threshold (sklearn's average_precision_score); NaN without relevant items."""
    hits = np.cumsum(hits_sorted, axis=1)
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


def average_precision(distances: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,) average precision of each query's ranking by ascending distance, ties treated as sklearn does.

    Equal distances form one threshold, so AP = Σ over distinct distances of (ΔR) · P at that distance,
    exactly sklearn.metrics.average_precision_score(relevant, −distance). Queries with nothing relevant get NaN.
    """
    return _tie_aware_ap(*_ranked(distances, relevant))


def ranking_figures(distances: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query AP, P@1, MAP@R and R-precision from one sort (NaN where a query has nothing relevant).

    P@1, MAP@R and R-precision follow pytorch-metric-learning's AccuracyCalculator with R = the number of
    relevant gallery items: P@1 = relevance of the nearest item; R-precision = relevant items among the first R;
    MAP@R = (1/R) Σ_{i ≤ R} P(i)·rel(i). Those three rank ties in gallery order (a stable sort; the library
    leaves tie order to its k-NN search); AP treats ties as one threshold, as sklearn does.
    """
    ranked, hits_sorted = _ranked(distances, relevant)
    total = hits_sorted.sum(1)
    within_r = np.arange(ranked.shape[1])[None, :] < total[:, None]
    cumulative = np.cumsum(hits_sorted, axis=1)
    precision = cumulative / np.arange(1, ranked.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        map_r = np.where(total > 0, (precision * hits_sorted * within_r).sum(1) / total, np.nan)
        r_precision = np.where(total > 0, (hits_sorted * within_r).sum(1) / total, np.nan)
    p1 = np.where(total > 0, hits_sorted[:, 0].astype(np.float64), np.nan)
    return {"ap": _tie_aware_ap(ranked, hits_sorted), "p1": p1, "map_r": map_r, "r_precision": r_precision}


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
    # Mann–Whitney U from average ranks: equal to sklearn's roc_auc_score (ties count half), ~100× faster in the bootstrap
    ranks = stats.rankdata(np.asarray(distances, dtype=np.float64))
    positives, negatives = int(malignant.sum()), int((~malignant).sum())
    return float((ranks[malignant].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class Interval:
    """A statistic on all the data with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float


def patient_draws(patients: Sequence[str] | np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's draws: each row's patient index and a (resamples, patients) array of the patients drawn.

    Every figure of a run resamples the same patients (the same seed gives the same draws).
    """
    names, groups = np.unique(np.asarray(patients), return_inverse=True)
    drawn = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    return groups, drawn


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
    groups, drawn = patient_draws(patients, resamples, seed)
    members = [np.flatnonzero(groups == i) for i in range(drawn.shape[1])]
    values = []
    for row in drawn:
        try:
            values.append(statistic(np.concatenate([members[i] for i in row])))
        except ValueError:
            continue
    estimate = float(statistic(np.arange(len(groups))))
    low, high = percentile_bounds(np.asarray(values, dtype=np.float64)[None], confidence)
    return Interval(estimate, float(low[0]), float(high[0]))


def bootstrap_means(values: np.ndarray, patients: Sequence[str] | np.ndarray, resamples: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Means over rows of each line of `values` (K, N) ignoring NaN, and their (K, resamples) patient-bootstrap replicates.

    The same draws as `bootstrap_ci`, vectorised: a resample's mean is Σ_p w_p S_p / Σ_p w_p n_p over per-patient
    sums S_p and counts n_p, with w_p the times patient p was drawn. Ratios of two such means (retention) use
    replicates of the same draws.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    groups, drawn = patient_draws(patients, resamples, seed)
    finite = np.isfinite(values)
    members = np.zeros((values.shape[1], drawn.shape[1]))
    members[np.arange(values.shape[1]), groups] = 1.0
    sums, counts = np.where(finite, values, 0.0) @ members, finite.astype(np.float64) @ members  # (K, P)
    weights = np.zeros((drawn.shape[1], len(drawn)))  # (P, R): times each patient is drawn in each resample
    np.add.at(weights, (drawn, np.arange(len(drawn))[:, None]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.sum(1) / counts.sum(1), (sums @ weights) / (counts @ weights)


def percentile_bounds(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per line of (K, R) bootstrap replicates, the percentile interval of its finite values (NaN where none is)."""
    replicates = np.where(np.isfinite(replicates), replicates, np.nan)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.full(len(replicates), np.nan), np.full(len(replicates), np.nan)
    defined = np.isfinite(replicates).any(axis=1)
    if defined.any():
        low[defined], high[defined] = np.nanpercentile(replicates[defined], [tail, 100 - tail], axis=1)
    return low, high
