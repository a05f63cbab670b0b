"""mAP against scikit-learn, P@1 / MAP@R / R-precision against pytorch-metric-learning, the tracking figures, the patient bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import average_precision_score, roc_auc_score

from eval.baselines import create
from eval.metrics import (
    average_precision,
    benign_malignant_auc,
    bootstrap_ci,
    bootstrap_means,
    mean_average_precision,
    movement_ratio,
    percentile_bounds,
    ranking_figures,
    spearman,
)
from retrieval import TAU
from retrieval.io import Identity
from retrieval.preprocess import network_input
from retrieval.slices import load_slices


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
    assert benign_malignant_auc(distances, alphas) == pytest.approx(roc_auc_score(alphas > TAU, distances))
    tied = np.round(distances, 1)  # many ties: each counts half, as sklearn counts them
    assert benign_malignant_auc(tied, alphas) == pytest.approx(roc_auc_score(alphas > TAU, tied))
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


def library_figures(distances: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> dict[str, float]:
    """pytorch-metric-learning's P@1, MAP@R and R-precision on exactly these distances (its k-NN replaced by a lookup)."""

    def knn(query: torch.Tensor, k: int, reference: torch.Tensor, ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(distances)[query[:, 0].long()]
        values, order = torch.sort(rows, dim=1, stable=True)
        return values[:, :k], order[:, :k]

    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count", knn_func=knn)
    query, reference = np.arange(len(distances), dtype=np.float32)[:, None], np.arange(distances.shape[1], dtype=np.float32)[:, None]
    return calculator.get_accuracy(query, query_labels, reference, gallery_labels, ref_includes_query=False)


@pytest.mark.archive
def test_p1_map_at_r_and_r_precision_equal_pytorch_metric_learning_on_real_distances(archive: Path) -> None:
    """Cardiac MR slices of three patients (three sequences each): every other slice queries the rest by GMSD."""
    files = [archive / "mr" / "myops" / f"{p}_{s}.nii.gz" for p in (101, 102, 104) for s in ("C0", "T2")]
    data = load_slices(files, Identity(manifest=archive / "manifest.csv"), 64)
    images = network_input(torch.from_numpy(data.images), data.modalities)[:, 0]
    labels = np.unique(data.patients, return_inverse=True)[1]
    query, gallery = np.arange(len(data)) % 2 == 0, np.arange(len(data)) % 2 == 1
    baseline = create("grad")
    distances = baseline.distance(baseline.score(images[query], baseline.prepare_gallery(images[gallery]))).numpy().astype(np.float64)
    ours = ranking_figures(distances, labels[query][:, None] == labels[gallery][None, :])
    theirs = library_figures(distances, labels[query], labels[gallery])
    assert len(np.unique(distances)) == distances.size  # no ties: both rank the same way
    assert np.mean(ours["p1"]) == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert np.mean(ours["map_r"]) == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)
    assert np.mean(ours["r_precision"]) == pytest.approx(theirs["r_precision"], abs=1e-9)
    assert 0.0 < np.mean(ours["map_r"]) < 1.0  # neither trivial nor hopeless, so the comparison means something


def test_ranking_figures_equal_the_library_on_many_labels_and_skip_queries_without_relevant_items() -> None:
    rng = np.random.default_rng(3)
    gallery_labels, query_labels = rng.integers(0, 8, size=60), rng.integers(0, 9, size=40)  # label 8 has no gallery item
    distances = rng.random((40, 60)) + 0.3 * (query_labels[:, None] != gallery_labels[None, :])
    ours = ranking_figures(distances, query_labels[:, None] == gallery_labels[None, :])
    lone = query_labels == 8
    assert lone.any() and np.isnan(ours["map_r"][lone]).all() and np.isnan(ours["p1"][lone]).all()
    theirs = library_figures(distances, query_labels, gallery_labels)
    for ours_key, their_key in (("p1", "precision_at_1"), ("map_r", "mean_average_precision_at_r"), ("r_precision", "r_precision")):
        assert np.nanmean(ours[ours_key]) == pytest.approx(theirs[their_key], abs=1e-9), ours_key
    np.testing.assert_allclose(ours["ap"], average_precision(distances, query_labels[:, None] == gallery_labels[None, :]))


def test_map_at_r_by_hand() -> None:
    """Relevant at ranks 1 and 3 of R = 3: (1/1 + 2/3) / 3; R-precision 2/3; P@1 1."""
    figures = ranking_figures(np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]), np.array([[True, False, True, False, True]]))
    assert figures["map_r"][0] == pytest.approx((1 + 2 / 3) / 3)
    assert figures["r_precision"][0] == pytest.approx(2 / 3) and figures["p1"][0] == 1.0


def test_vectorised_bootstrap_of_means_equals_the_resampling_loop() -> None:
    rng = np.random.default_rng(5)
    patients = np.repeat([f"p{i}" for i in range(12)], rng.integers(1, 6, size=12))
    values = rng.random((3, len(patients)))
    values[1, 4] = np.nan  # a query without relevant items is left out of the mean
    estimate, replicates = bootstrap_means(values, patients, resamples=50, seed=9)
    low, high = percentile_bounds(replicates)
    for line in range(3):
        loop = bootstrap_ci(lambda rows: float(np.nanmean(values[line, rows])), patients, resamples=50, seed=9)
        assert estimate[line] == pytest.approx(loop.estimate) and (low[line], high[line]) == pytest.approx((loop.low, loop.high))
