"""Fit the α estimator (`retrieval.alpha`) on seeded distortions of training slices, and add it to a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.alpha import CONFIG_KEY, FACTOR_COLUMN, AlphaEstimator, estimator_features
from retrieval.slices import SliceSet

TREES, DEPTH, RATE = 100, 3, 0.1  # picked for size among settings within 0.015 of each other on the folds (docs/training.md)
DRAWS = 2  # distorted copies per slice at uniform α, beside its clean copy
CHUNK = 256  # slices distorted and measured at a time
MAX_SLICES = 20_000  # larger archives fit on a seeded sample: up to 100,000 views (3 on the grid, 2 native a slice) take minutes on 2 cores
SMALL_FACTOR = 2.0  # slices resized by at most this are read by the small-image trees: half the smallest whole-slice factor of the archive (docs/training.md)
SMALL_FIT_FACTOR = 3.0  # native views resized by at most this join the small-image trees' fit


def training_statistics(data: SliceSet, seed: int, draws: int = DRAWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimator features, α, whether the row is a native view) of every slice clean and at `draws` seeded uniform α
    on the slices' grid, and of its native view (where the slices carry them, and it was resized by at most
    SMALL_FIT_FACTOR) clean and at one seeded uniform α: a zoomed crop or a small image is clean at its own noise
    level, and its resize factor tells the small-image trees which level that is."""
    rng = np.random.default_rng([seed, 7])
    rows = np.tile(np.arange(len(data)), draws + 1)
    alphas = np.concatenate([np.zeros(len(data)), rng.uniform(0.0, 1.0, size=len(data) * draws)]).astype(np.float32)
    features = [_features(data.images, data.modalities, data.factors, rows, alphas, rng.integers(0, 2**31 - 1, size=len(rows)))]
    native = np.zeros(len(rows), bool)
    if data.native is not None and data.native_factors is not None:
        rows = np.tile(np.arange(len(data)), 2)
        native_alphas = np.concatenate([np.zeros(len(data)), rng.uniform(0.0, 1.0, size=len(data))]).astype(np.float32)
        seeds = rng.integers(0, 2**31 - 1, size=len(rows))
        kept = data.native_factors[rows] <= SMALL_FIT_FACTOR
        features.append(_features(data.native, data.modalities, data.native_factors, rows[kept], native_alphas[kept], seeds[kept]))
        alphas, native = np.concatenate([alphas, native_alphas[kept]]), np.concatenate([native, np.ones(int(kept.sum()), bool)])
    return np.concatenate(features), alphas, native


def _features(images: np.ndarray, modalities: np.ndarray, factors: np.ndarray | None, rows: np.ndarray, alphas: np.ndarray,
              seeds: np.ndarray) -> np.ndarray:
    """Estimator features of images[rows] (modality units on the grid) distorted at `alphas` with `seeds`, CHUNK at a time."""
    import torch

    from retrieval.distortions import distort_mixed
    from retrieval.preprocess import network_input

    out = [np.zeros((0, FACTOR_COLUMN + 1), np.float32)]
    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        distorted = distort_mixed(torch.from_numpy(images[part]), modalities[part], alphas[start : start + CHUNK], seeds[start : start + CHUNK])
        out.append(estimator_features(network_input(distorted, modalities[part]).numpy(), None if factors is None else factors[part]))
    return np.concatenate(out)


def fit_alpha_estimator(data: SliceSet, seed: int = 0) -> AlphaEstimator:
    """The α estimator fitted on the slices (at most MAX_SLICES of them, a seeded sample) clean and distorted (seeded),
    and on their native views."""
    if len(data) < 2:
        raise ValueError("the α estimator needs at least two training slices")
    if len(data) > MAX_SLICES:
        data = data.subset(np.sort(np.random.default_rng([seed, 8]).choice(len(data), MAX_SLICES, replace=False)))
    return fit_trees(*training_statistics(data, seed), seed)


def fit_trees(features: np.ndarray, alphas: np.ndarray, native: np.ndarray, seed: int = 0) -> AlphaEstimator:
    """The estimator fitted on (N, 24) features, their true α and which rows are native views: whole-slice trees on
    the statistics of the whole slices, and (given native views) small-image trees on every row, factor included."""
    whole = _trees(features[~native, :FACTOR_COLUMN], alphas[~native], seed)
    if not native.any():
        return whole
    return dataclasses.replace(whole, small=_trees(features, alphas, seed), small_factor=SMALL_FACTOR)


def _trees(features: np.ndarray, alphas: np.ndarray, seed: int) -> AlphaEstimator:
    """Regression trees from features to α."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=TREES, max_depth=DEPTH, learning_rate=RATE, early_stopping=False, random_state=seed)
    return AlphaEstimator.from_sklearn(model.fit(features, alphas))


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
