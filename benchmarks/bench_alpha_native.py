"""How â reads scans degraded at their own resolution, and clean small images: the gap the 64² input leaves.

Training, the benchmark and α itself distort slices on the working grid (64²). A user's degraded scan was distorted
at its native resolution, and the resize to 64² averages much of that noise away; a clean 64² crop keeps its native
noise. Both are read only through the 64² network input (docs/training.md, "Zoomed and small slices").

Part 1, per leave-one-dataset-out fold: each fold checkpoint's α estimator (FOLDS/<fold>/final.pt, fitted without
that fold's datasets) on `--per-dataset` seeded slices of each held-out dataset, distorted at α = 0, 0.3, 0.6, 0.9 on
the reader's pixels before the resize. Part 2: the shipped checkpoint (or `--checkpoint`) on the clean test images
pydicom and nibabel ship. Prints markdown tables.

    python benchmarks/bench_alpha_native.py [ARCHIVE] --folds runs/folds-alpha [--per-dataset 30]
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
from retrieval.preprocess import is_empty, prepare
from retrieval.slices import cached_slices
from training.folds import plan_folds

LEVELS = (0.0, 0.3, 0.6, 0.9)
PACKAGE_FILES = [(get_testdata_file(name), None) for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")] + [
    (Path(nibabel.__file__).parent / "tests" / "data" / name, "MR") for name in ("example4d.nii.gz", "anatomical.nii")]


def natively_distorted(archive: Path, per_dataset: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (N, 3, S, S), α, modality, dataset) of seeded slices of every dataset, each distorted at every level
    of LEVELS on its reader's pixels, then preprocessed as a query is."""
    identity = Identity(manifest=archive / "manifest.csv")
    items = [item for item in iter_slices([archive], identity)
             if not isinstance(item, Skipped) and item.modality in ("CT", "MR") and not is_empty(item.pixels, item.modality)]
    names = np.array([identity.dataset(Path(item.path)) for item in items])
    rng = np.random.default_rng(seed)
    inputs, alphas, modalities, datasets = [], [], [], []
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        for row in rng.choice(rows, min(per_dataset, len(rows)), replace=False):
            item = items[row]
            pixels = np.asarray(item.pixels, np.float32)
            for level in LEVELS:
                distorted = pixels if level == 0 else distort(pixels, level, item.modality, seed=int(rng.integers(2**31 - 1)))
                inputs.append(prepare(distorted, item.modality, size, item.spacing))
                alphas.append(level)
                modalities.append(item.modality)
                datasets.append(name)
    return np.stack(inputs), np.array(alphas), np.array(modalities), np.array(datasets)


def main() -> None:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--folds", type=Path, required=True, help="folder of fold runs <fold>/final.pt with α estimators")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for the package images (default: the shipped one)")
    parser.add_argument("--cache", type=Path, help="slice cache, only to plan the folds without reading pixels twice")
    parser.add_argument("--per-dataset", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folds = plan_folds(cached_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), 64, args.cache))
    inputs, alphas, modalities, datasets = natively_distorted(args.archive, args.per_dataset, 64, args.seed)
    estimated = np.zeros(len(inputs), np.float32)
    for fold in folds:
        rows = np.isin(datasets, fold.held_out)
        estimated[rows] = DistortionAwareMetric.load(args.folds / fold.name / "final.pt", device="cpu").embed_tensor(torch.from_numpy(inputs[rows])).alpha
    print(f"Slices distorted at their native resolution, then resized to 64²; each fold's estimator on its held-out datasets "
          f"({args.per_dataset} slices a dataset)\n")
    print("| modality | Spearman(â, α) | " + " | ".join(f"mean â at α = {level:g}" for level in LEVELS) + " |")
    print("|---|---|" + "---|" * len(LEVELS))
    for modality in np.unique(modalities):
        rows = modalities == modality
        means = [f"{estimated[rows & (alphas == level)].mean():.2f}" for level in LEVELS]
        print(f"| {modality} | {spearmanr(estimated[rows], alphas[rows]).statistic:.2f} | " + " | ".join(means) + " |")
    metric = DistortionAwareMetric.load(args.checkpoint, device="cpu")
    print(f"\nClean package images, {args.checkpoint or 'the shipped checkpoint'}: â of each slice (median, max)\n")
    print("| file | slices | median â | max â |")
    print("|---|---|---|---|")
    for path, modality in PACKAGE_FILES:
        values = metric.alpha(path, modality=modality)
        print(f"| {Path(path).name} | {len(values)} | {np.median(values):.2f} | {values.max():.2f} |")


if __name__ == "__main__":
    main()
