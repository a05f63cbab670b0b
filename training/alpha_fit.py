"""Fit the α estimator (`retrieval.alpha`) on seeded distortions of training slices, and add it to a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrieval.alpha import CONFIG_KEY, AlphaEstimator, distortion_statistics
from retrieval.slices import SliceSet

TREES, DEPTH, RATE = 100, 3, 0.1  # picked for size among settings within 0.015 of each other on the folds (docs/training.md)
DRAWS = 2  # distorted copies per slice at uniform α, beside its clean copy
CHUNK = 256  # slices distorted and measured at a time
MAX_SLICES = 20_000  # larger archives fit on a seeded sample: 60,000 views (clean and 2 distorted each) take minutes on 2 cores


def training_statistics(data: SliceSet, seed: int, draws: int = DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """(statistics, α) of every slice clean and at `draws` seeded uniform α, in modality units on the slices' grid."""
    import torch

    from retrieval.distortions import distort_mixed
    from retrieval.preprocess import network_input

    rng = np.random.default_rng([seed, 7])
    rows = np.tile(np.arange(len(data)), draws + 1)
    alphas = np.concatenate([np.zeros(len(data)), rng.uniform(0.0, 1.0, size=len(data) * draws)]).astype(np.float32)
    seeds = rng.integers(0, 2**31 - 1, size=len(rows))
    statistics = []
    for start in range(0, len(rows), CHUNK):
        part = slice(start, start + CHUNK)
        images = torch.from_numpy(data.images[rows[part]])
        modalities = data.modalities[rows[part]]
        distorted = distort_mixed(images, modalities, alphas[part], seeds[part])
        statistics.append(distortion_statistics(network_input(distorted, modalities).numpy()))
    return np.concatenate(statistics), alphas


def fit_alpha_estimator(data: SliceSet, seed: int = 0) -> AlphaEstimator:
    """Regression trees from `distortion_statistics` to α, fitted on the slices (at most MAX_SLICES of them, a seeded
    sample) clean and distorted (seeded)."""
    if len(data) < 2:
        raise ValueError("the α estimator needs at least two training slices")
    if len(data) > MAX_SLICES:
        data = data.subset(np.sort(np.random.default_rng([seed, 8]).choice(len(data), MAX_SLICES, replace=False)))
    return fit_trees(*training_statistics(data, seed), seed)


def fit_trees(statistics: np.ndarray, alphas: np.ndarray, seed: int = 0) -> AlphaEstimator:
    """The estimator's regression trees fitted on (N, F) statistics and their true α."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=TREES, max_depth=DEPTH, learning_rate=RATE, early_stopping=False, random_state=seed)
    return AlphaEstimator.from_sklearn(model.fit(statistics, alphas))


def with_estimator(config: dict[str, Any], estimator: AlphaEstimator, slices: int) -> dict[str, Any]:
    """A checkpoint config that reports â by `estimator`, noting how many slices it was fitted on."""
    return config | {CONFIG_KEY: estimator.to_config(), "alpha_estimator_slices": slices}


def calibrate_checkpoint(model: Any, config: dict[str, Any], data: SliceSet, out: Path, seed: int = 0) -> dict[str, Any]:
    """Fit the estimator on `data` and write the checkpoint's model and config with it to `out` (weights unchanged,
    fp16 as shipped)."""
    from retrieval.checkpoint import save_checkpoint

    estimator = fit_alpha_estimator(data, seed)
    save_checkpoint(out, model, with_estimator(config, estimator, len(data)), half=True)
    return {"checkpoint": str(out), "slices": len(data), "patients": int(len(np.unique(data.patients))),
            "by_dataset": data.summary()["by_dataset"]}
