"""How â carries to a dataset it never saw: the α estimator, and other regressors on the same statistics, per fold.

For each leave-one-dataset-out fold of `retrieval train --folds`, the estimator (`training.alpha_fit`) is fitted on
the other datasets' slices and measured on the held-out ones: every held-out slice clean and once at a seeded
uniform α. Printed per held-out dataset and pooled per modality: Spearman(â, α) and the median â of the clean
slices. Rows: the shipped estimator (regression trees), the same trees fitted without small views, and, fitted on the
same statistics, a ridge regression and a small MLP — the comparison the trees were chosen by. `--fold-models DIR`
adds the α head of each fold model DIR/<fold>/final.pt (trained without that dataset) on the same slices. Three
tables: the slices on the grid (whole slices, as the benchmark distorts them), their seeded native views (zoomed
crops and coarser acquisitions, `retrieval.preprocess.native_view`) and their small views (`training.alpha_fit.small_views`,
drawn with another seed than the fit's: icons and 4 mm volumes).

    python benchmarks/bench_alpha.py [ARCHIVE] --cache cache [--fold-models runs/folds-d4]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retrieval.alpha import FACTOR_COLUMN, estimator_features
from retrieval.distortions import distort_mixed
from retrieval.io import Identity
from retrieval.metric import DistortionAwareMetric
from retrieval.preprocess import network_input
from retrieval.slices import SliceSet, cached_slices
from training.alpha_fit import SMALL, WHOLE, fit_trees, small_views, training_statistics
from training.folds import plan_folds, split_by_datasets

Predictor = Callable[[np.ndarray], np.ndarray]


def held_out_views(images: np.ndarray, modalities: np.ndarray, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Network inputs of every image clean, then at a seeded uniform α (its own seed), and the true α of each."""
    rng = np.random.default_rng([seed, 11])
    alphas = rng.uniform(0.0, 1.0, len(images)).astype(np.float32)
    clean = torch.from_numpy(images)
    distorted = distort_mixed(clean, modalities, alphas, rng.integers(0, 2**31 - 1, len(images)))
    views = torch.cat([network_input(clean, modalities), network_input(distorted, modalities)])
    return views, np.concatenate([np.zeros(len(images), np.float32), alphas])


def view_kinds(data: SliceSet, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The held-out images on the grid, as native views and as small views, each with its resize factors."""
    assert data.native is not None and data.native_factors is not None, "the slices carry native views (cached_slices draws them)"
    return {"grid": (data.images, data.factors), "native views": (data.native, data.native_factors),
            "small views": small_views(data.images, np.random.default_rng([seed, 12]))}


def regressors(train: SliceSet, seed: int) -> dict[str, Predictor]:
    """The shipped trees, the same without small views, and ridge and MLP regressions fitted on the same statistics
    of the same distortions (measured once; the archive is under the estimator's sampling cap, so the trees are what
    `fit_alpha_estimator` fits)."""
    features, alphas, kinds = training_statistics(train, seed)
    trees = fit_trees(features, alphas, kinds != WHOLE, seed)
    drawn = kinds != SMALL  # the rows a fit without small views draws (the small ones are drawn last)
    without_small = fit_trees(features[drawn], alphas[drawn], kinds[drawn] != WHOLE, seed)
    whole, whole_alphas = features[kinds == WHOLE, :FACTOR_COLUMN], alphas[kinds == WHOLE]
    ridge = make_pipeline(StandardScaler(), RidgeCV()).fit(whole, whole_alphas)
    mlp = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=2000, random_state=seed)).fit(whole, whole_alphas)
    return {"trees (shipped)": trees.read, "trees without small views": without_small.read,
            "ridge": lambda s: np.clip(ridge.predict(s[:, :FACTOR_COLUMN]), 0.0, 1.0),
            "MLP 32-16": lambda s: np.clip(mlp.predict(s[:, :FACTOR_COLUMN]), 0.0, 1.0)}


def main() -> None:
    """Print the per-dataset and per-modality tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold-models", type=Path, help="folder of fold runs (<fold>/final.pt) whose α heads to add")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = cached_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), args.size, args.cache)
    results: dict[str, dict[str, list[np.ndarray]]] = {}
    truth: dict[str, list[np.ndarray]] = {}
    datasets, modalities = [], []
    for fold in plan_folds(data):
        train, held_out = split_by_datasets(data, fold.held_out)
        predictors: dict[str, Predictor] = regressors(train, args.seed)
        head = None
        if args.fold_models is not None:
            head = DistortionAwareMetric.load(args.fold_models / fold.name / "final.pt", device="cpu")
            head.estimator = None  # its α head, whatever the checkpoint holds
        for kind, (images, factors) in view_kinds(held_out, args.seed).items():
            views, alphas = held_out_views(images, held_out.modalities, args.seed)
            statistics = estimator_features(views.numpy(), np.tile(factors, 2))
            estimates = {name: predict(statistics) for name, predict in predictors.items()}
            if head is not None:
                estimates["network α head (fold model)"] = head.embed_tensor(views).alpha
            for name, values in estimates.items():
                results.setdefault(kind, {}).setdefault(name, []).append(values)
            truth.setdefault(kind, []).append(alphas)
        datasets.append(np.tile(held_out.datasets, 2))
        modalities.append(np.tile(held_out.modalities, 2))
        print(f"fold {fold.name}: fitted on {len(train)} slices, measured on {len(held_out)}", flush=True)
    dataset, modality = np.concatenate(datasets), np.concatenate(modalities)
    groups = [(name, dataset == name) for name in np.unique(dataset)] + [(f"all {m}", modality == m) for m in np.unique(modality)]
    for kind, per_regressor in results.items():
        alpha = np.concatenate(truth[kind])
        print(f"\n{kind}: Spearman(â, α) / median â of the clean held-out images, each fold's estimator fitted without its datasets\n")
        print("| regressor | " + " | ".join(name for name, _ in groups) + " |")
        print("|---|" + "---|" * len(groups))
        for name, per_fold in per_regressor.items():
            predicted = np.concatenate(per_fold)
            cells = [f"{spearmanr(predicted[rows], alpha[rows]).statistic:.2f} / {np.median(predicted[rows & (alpha == 0)]):.2f}" for _, rows in groups]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
