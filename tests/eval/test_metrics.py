"""mAP against scikit-learn, the distortion-tracking figures on hand-checkable data, and the patient bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from eval.baselines import create
from eval.metrics import (
    average_precision,
    benign_malignant_auc,
    bootstrap_ci,
    mean_average_precision,
    movement_ratio,
    spearman,
)
from retrieval import TAU


def sklearn_ap(distances: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-query AP from scikit-learn, ranking by negated distance."""
    return np.array([average_precision_score(r, -d) for d, r in zip(distances, relevant, strict=True)])


@pytest.mark.parametrize("tied", [False, True])
def test_average_precision_matches_sklearn(tied: bool) -> None:
    rng = np.random.default_rng(7)
    distances = rng.integers(0, 6, size=(40, 30)).astype(float) if tied else rng.random((40, 30))
    relevant = rng.random((40, 30)) < 0.25
    relevant[:, 0] = True
    np.testing.assert_allclose(average_precision(distances, relevant), sklearn_ap(distances, relevant), atol=1e-12)


def test_map_of_a_real_baseline_matches_sklearn(slices: torch.Tensor) -> None:
    """Queries 4–6 (distorted copies) against the seven slices, relevant = same source image."""
    source = np.array([0, 1, 2, 3, 0, 1, 3])
    baseline = create("grad")
    distances = baseline.distance(baseline.score(slices[4:], baseline.prepare_gallery(slices[:4]))).numpy()
    relevant = source[4:, None] == source[None, :4]
    assert mean_average_precision(distances, relevant) == pytest.approx(sklearn_ap(distances, relevant).mean(), abs=1e-12)


def test_queries_without_relevant_items_are_left_out_of_the_mean() -> None:
    distances = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    relevant = np.array([[False, True, False], [False, False, False]])
    assert np.isnan(average_precision(distances, relevant)[1])
    assert mean_average_precision(distances, relevant) == pytest.approx(0.5)


def test_average_precision_refuses_mismatched_or_non_finite_input() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        average_precision(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="NaN or infinite"):
        average_precision(np.array([[0.0, np.nan]]), np.array([[True, False]]))


def test_spearman_of_distance_with_alpha() -> None:
    alphas = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), alphas) == pytest.approx(1.0)
    # one adjacent swap: 1 − 6·Σd² / (n(n² − 1)) = 1 − 6·2 / 120
    assert spearman(np.array([1.0, 3.0, 2.0, 4.0, 5.0]), alphas) == pytest.approx(0.9)


def test_movement_ratio() -> None:
    assert movement_ratio(np.array([0.1, 0.3]), np.array([0.5, 1.5])) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="must be positive"):
        movement_ratio(np.array([0.1]), np.array([0.0]))


def test_benign_malignant_auc_counts_pairs_and_puts_tau_on_the_benign_side() -> None:
    rng = np.random.default_rng(2)
    alphas = rng.choice(np.round(np.arange(0, 1.01, 0.1), 1), size=60)
    distances = alphas + rng.normal(0, 0.2, size=60)
    malignant, benign = distances[alphas > TAU], distances[alphas <= TAU]
    wins = (malignant[:, None] > benign[None]).sum() + 0.5 * (malignant[:, None] == benign[None]).sum()
    assert benign_malignant_auc(distances, alphas) == pytest.approx(wins / (len(malignant) * len(benign)))
    assert benign_malignant_auc(np.array([0.0, 1.0, 2.0]), np.array([0.2, TAU, 0.4])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both sides"):
        benign_malignant_auc(np.array([1.0, 2.0]), np.array([0.5, 0.6]))


def test_bootstrap_resamples_whole_patients() -> None:
    """Two patients with constant but different values: resampling patients (not rows) spans both extremes."""
    patients = np.array(["a"] * 30 + ["b"] * 10)
    values = np.where(patients == "a", 0.0, 1.0)
    interval = bootstrap_ci(lambda rows: values[rows].mean(), patients, seed=0)
    assert interval.estimate == pytest.approx(0.25)
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(20), 5)
    values = rng.normal(patients * 0.1, 0.05)

    def mean(rows: np.ndarray) -> float:
        return values[rows].mean()

    first, again, other = (bootstrap_ci(mean, patients, seed=s) for s in (1, 1, 2))
    assert first == again and first != other
    assert first.low < first.estimate < first.high


def test_bootstrap_skips_resamples_where_the_statistic_is_undefined() -> None:
    """Each patient has only benign or only malignant pairs, so many resamples have one class and no AUC."""
    patients = np.array(["a", "a", "b", "b", "c", "c"])
    alphas = np.array([0.0, 0.1, 0.8, 0.9, 0.2, 0.3])
    interval = bootstrap_ci(lambda rows: benign_malignant_auc(alphas[rows] * 2, alphas[rows]), patients)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)
