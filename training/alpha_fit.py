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
MAX_SLICES = 20_000  # larger archives fit on a seeded sample: up to 140,000 views (3 on the grid, 2 native and 2 small a slice) take minutes on 2 cores
SMALL_FACTOR = 2.0  # slices resized by at most this are read by the small-image trees: half the smallest whole-slice factor of the archive (docs/training.md)
SMALL_FIT_FACTOR = 3.0  # native views resized by at most this join the small-image trees' fit
SMALL_SIDES = (16, 48)  # small views: a DICOM icon's side up to the smallest native crop's (docs/training.md)
WHOLE, NATIVE, SMALL = 0, 1, 2  # what a row of `training_statistics` is: a slice on its grid, a native view, a small view


def training_statistics(data: SliceSet, seed: int, draws: int = DRAWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimator features, α, each row's kind: WHOLE, NATIVE or SMALL) of every slice clean and at `draws` seeded
    uniform α on the slices' grid; and, where the slices carry native views, of each native view resized by at most
    SMALL_FIT_FACTOR and each of its `small_views`, clean and at one seeded uniform α: a zoomed crop or a small image is
    clean at its own noise level and spectrum, and its resize factor tells the small-image trees which. Each kind is
    drawn after the kinds before it, so the rows without the SMALL ones are those a fit without small views draws."""
    rng = np.random.default_rng([seed, 7])
    rows = np.tile(np.arange(len(data)), draws + 1)
    alphas = np.concatenate([np.zeros(len(data)), rng.uniform(0.0, 1.0, size=len(data) * draws)]).astype(np.float32)
    parts = [(_features(data.images, data.modalities, data.factors, rows, alphas, rng.integers(0, 2**31 - 1, size=len(rows))), alphas, WHOLE)]
    if data.native is not None and data.native_factors is not None:
        parts.append((*_clean_and_distorted(data.native, data.native_factors, data.modalities, rng), NATIVE))
        parts.append((*_clean_and_distorted(*small_views(data.images, rng), data.modalities, rng), SMALL))
    kinds = np.concatenate([np.full(len(part_alphas), kind, np.int8) for _, part_alphas, kind in parts])
    return np.concatenate([f for f, _, _ in parts]), np.concatenate([a for _, a, _ in parts]), kinds


def small_views(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each grid image averaged down to a seeded side of SMALL_SIDES pixels and resized back onto the grid, and the
    resize factor that gives (0.25–0.75 on a 64² grid): a small or coarse image (a DICOM icon, a 4 mm volume).
    Its upsampled spectrum has nothing near the grid's Nyquist frequency, which trees fitted without such views read as
    a k-space cut-off (nibabel's clean 4 mm `reoriented_anat_moved.nii` read up to 0.44, docs/training.md)."""
    from retrieval.preprocess import resize_square, to_grid

    size = images.shape[-1]
    sides = np.exp(rng.uniform(np.log(SMALL_SIDES[0]), np.log(SMALL_SIDES[1]), size=len(images))).round().astype(int)
    pairs = [to_grid(resize_square(image, int(side)), size) for image, side in zip(images, sides)]
    return np.stack([grid for grid, _ in pairs]).astype(np.float32), np.array([factor for _, factor in pairs], np.float32)


def _clean_and_distorted(views: np.ndarray, factors: np.ndarray, modalities: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features and α of every view resized by at most SMALL_FIT_FACTOR, clean and at one seeded uniform α."""
    rows = np.tile(np.arange(len(views)), 2)
    alphas = np.concatenate([np.zeros(len(views)), rng.uniform(0.0, 1.0, size=len(views))]).astype(np.float32)
    seeds = rng.integers(0, 2**31 - 1, size=len(rows))
    kept = factors[rows] <= SMALL_FIT_FACTOR
    return _features(views, modalities, factors, rows[kept], alphas[kept], seeds[kept]), alphas[kept]


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
    and on their native and small views."""
    if len(data) < 2:
        raise ValueError("the α estimator needs at least two training slices")
    if len(data) > MAX_SLICES:
        data = data.subset(np.sort(np.random.default_rng([seed, 8]).choice(len(data), MAX_SLICES, replace=False)))
    features, alphas, kinds = training_statistics(data, seed)
    return fit_trees(features, alphas, kinds != WHOLE, seed)


def fit_trees(features: np.ndarray, alphas: np.ndarray, views: np.ndarray, seed: int = 0) -> AlphaEstimator:
    """The estimator fitted on (N, 24) features, their true α and which rows are native or small views: whole-slice
    trees on the statistics of the whole slices, and (given such views) small-image trees on every row, factor included."""
    whole = _trees(features[~views, :FACTOR_COLUMN], alphas[~views], seed)
    if not views.any():
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
