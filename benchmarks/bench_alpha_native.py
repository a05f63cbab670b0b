"""How â reads scans degraded at their own resolution, and clean small images: the gap the 64² input leaves.

Training, the benchmark and α itself distort slices on the working grid (64²). A user's degraded scan was distorted
at its native resolution, and the resize to 64² averages much of that noise away; a clean 64² crop keeps its native
noise. Both are read only through the 64² network input (docs/training.md, "Zoomed and small slices").

Part 1, per leave-one-dataset-out fold: the α estimator fitted as `retrieval train` fits it on the other datasets
(`training.alpha_fit`), on `--per-dataset` seeded slices of each held-out dataset distorted at α = 0, 0.3, 0.6, 0.9
on the reader's pixels before the resize, and on every held-out slice's seeded native view (a zoomed crop or a
decimated slice, `retrieval.preprocess.native_view`) clean. Part 2: the shipped checkpoint (or `--checkpoint`) on the
clean test images pydicom and nibabel ship. Prints markdown tables.

    python benchmarks/bench_alpha_native.py [ARCHIVE] --cache cache [--per-dataset 30]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nibabel
import numpy as np
import torch
from pydicom.data import get_testdata_file
from scipy.stats import spearmanr

from retrieval.distortions import distort
from retrieval.io import Identity, Skipped, iter_slices
from retrieval.metric import DistortionAwareMetric
from retrieval.preprocess import is_empty, network_input, prepare, resize_factor
from retrieval.slices import cached_slices
from training.alpha_fit import fit_alpha_estimator
from training.folds import plan_folds, split_by_datasets

LEVELS = (0.0, 0.3, 0.6, 0.9)
PACKAGE_FILES = [(get_testdata_file(name), None) for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")] + [
    (Path(nibabel.__file__).parent / "tests" / "data" / name, "MR") for name in ("example4d.nii.gz", "anatomical.nii")]


def natively_distorted(archive: Path, per_dataset: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (N, 3, S, S), resize factors, α, modality, dataset) of seeded slices of every dataset, each distorted at
    every level of LEVELS on its reader's pixels, then preprocessed as a query is."""
    identity = Identity(manifest=archive / "manifest.csv")
    items = [item for item in iter_slices([archive], identity)
             if not isinstance(item, Skipped) and item.modality in ("CT", "MR") and not is_empty(item.pixels, item.modality)]
    names = np.array([identity.dataset(Path(item.path)) for item in items])
    rng = np.random.default_rng(seed)
    inputs, factors, alphas, modalities, datasets = [], [], [], [], []
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        for row in rng.choice(rows, min(per_dataset, len(rows)), replace=False):
            item = items[row]
            pixels = np.asarray(item.pixels, np.float32)
            factors += [resize_factor(pixels.shape, size, item.spacing)] * len(LEVELS)
            for level in LEVELS:
                distorted = pixels if level == 0 else distort(pixels, level, item.modality, seed=int(rng.integers(2**31 - 1)))
                inputs.append(prepare(distorted, item.modality, size, item.spacing))
                alphas.append(level)
                modalities.append(item.modality)
                datasets.append(name)
    return np.stack(inputs), np.array(factors), np.array(alphas), np.array(modalities), np.array(datasets)


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for the package images (default: the shipped one)")
    parser.add_argument("--cache", type=Path, help="slice cache (retrieval train --cache)")
    parser.add_argument("--per-dataset", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = cached_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), 64, args.cache)
    inputs, factors, alphas, modalities, datasets = natively_distorted(args.archive, args.per_dataset, 64, args.seed)
    estimated = np.zeros(len(inputs), np.float32)
    views: list[tuple[np.ndarray, np.ndarray]] = []  # (modality, â) of the held-out native views, clean
    for fold in plan_folds(data):
        train, held_out = split_by_datasets(data, fold.held_out)
        estimator = fit_alpha_estimator(train, args.seed)
        rows = np.isin(datasets, fold.held_out)
        estimated[rows] = estimator.estimate(inputs[rows], factors[rows])
        views.append((held_out.modalities, estimator.estimate(network_input(held_out.native, held_out.modalities).numpy(), held_out.native_factors)))
        print(f"fold {fold.name}: fitted on {len(train)} slices", flush=True)
    view_modalities, view_alphas = (np.concatenate(part) for part in zip(*views))
    print(f"\nSlices distorted at their native resolution, then resized to 64²; each fold's estimator on its held-out datasets "
          f"({args.per_dataset} slices a dataset), and on their native views clean (every held-out slice once)\n")
    print("| modality | Spearman(â, α) | " + " | ".join(f"mean â at α = {level:g}" for level in LEVELS) + " | native views: median â |")
    print("|---|---|" + "---|" * (len(LEVELS) + 1))
    for modality in np.unique(modalities):
        rows = modalities == modality
        means = [f"{estimated[rows & (alphas == level)].mean():.2f}" for level in LEVELS]
        print(f"| {modality} | {spearmanr(estimated[rows], alphas[rows]).statistic:.2f} | " + " | ".join(means)
              + f" | {np.median(view_alphas[view_modalities == modality]):.2f} |")
    metric = DistortionAwareMetric.load(args.checkpoint, device="cpu")
    print(f"\nClean package images, {args.checkpoint or 'the shipped checkpoint'}: â of each slice (median, max)\n")
    print("| file | slices | median â | max â |")
    print("|---|---|---|---|")
    for path, modality in PACKAGE_FILES:
        values = metric.alpha(path, modality=modality)
        print(f"| {Path(path).name} | {len(values)} | {np.median(values):.2f} | {values.max():.2f} |")


if __name__ == "__main__":
    main()
