"""How far the distortion moves each layout map: mean cosine of a slice's clean and distorted unit maps, per dataset.

    python benchmarks/bench_layout.py [ARCHIVE] [--alpha 0.8] [--per-dataset 40] [--levels 0.2 0.3]

A layout that a distorted gallery slice keeps is what the archive protocol's retention asks of it
(docs/training.md): 1.0 means the distortion leaves the map where it was. Rows: the intensity thumbnail and the
silhouette at each ramp level (`retrieval.model.silhouettes`), on seeded slices of each dataset at 64², each
distorted with its own seed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.distortions import distort_mixed
from retrieval.io import Identity
from retrieval.model import silhouettes, thumbnails
from retrieval.preprocess import network_input
from retrieval.slices import load_slices


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--per-dataset", type=int, default=40)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), 64)
    maps = {"intensity thumbnail": thumbnails} | {f"silhouette, ramp to {level:g}": (lambda x, level=level: silhouettes(x, level=level)) for level in args.levels}
    rng = np.random.default_rng(0)
    print(f"mean cosine of clean and α = {args.alpha:g} layout maps, {args.per_dataset} slices per dataset, 64²\n")
    print("| dataset | " + " | ".join(maps) + " |")
    print("|---|" + "---|" * len(maps))
    for dataset in np.unique(data.datasets):
        rows = rng.choice(np.flatnonzero(data.datasets == dataset), min(args.per_dataset, int((data.datasets == dataset).sum())), replace=False)
        images, modalities = torch.from_numpy(data.images[rows]), data.modalities[rows]
        clean = network_input(images, modalities)
        noisy = network_input(distort_mixed(images, modalities, np.full(len(rows), args.alpha, np.float32), np.arange(len(rows))), modalities)
        cosines = [float((F.normalize(f(clean).flatten(1), dim=1) * F.normalize(f(noisy).flatten(1), dim=1)).sum(1).mean()) for f in maps.values()]
        print(f"| {dataset} | " + " | ".join(f"{c:.3f}" for c in cosines) + " |", flush=True)


if __name__ == "__main__":
    main()
