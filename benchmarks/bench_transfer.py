"""What carries to a dataset the model never saw: anatomy mAP on one held-out dataset from different features.

For a fold model and its held-out dataset (the same validation set `retrieval train` builds), prints the mAP of:
the model's D4-pooled embedding and its single view; encoder layers 2–4 pooled globally or on a 2×2 grid; an
untrained ResNet-18's layers; the slice itself as a mean-centred 16×16 thumbnail (by cosine, the same as z-scored), in the reader's orientation, averaged
over the 8 flips/turns (what D4 pooling does to a layout) and turned to a canonical orientation chosen from the
thumbnail; and the model's embedding concatenated with that canonical thumbnail. Also how often the canonical
orientation of a slice at α = 0.8 is the one of its clean self, and how well â separates α > TAU from α ≤ TAU on the
held-out slices: as it is, and relative to the median â of the same patient's other clean slices (what
`qc --relative` does per series). All at the cache's working grid (64² by default).

    python benchmarks/bench_transfer.py runs/folds/myops/final.pt --dataset myops --archive ../shared/data --cache cache
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from retrieval import TAU  # noqa: E402
from retrieval.checkpoint import load_checkpoint  # noqa: E402
from retrieval.metric import embed_model  # noqa: E402
from retrieval.embeddings import LAYOUT_SIDE  # noqa: E402
from retrieval.model import DisentangledSiamese, dihedral, thumbnails  # noqa: E402
from retrieval.io import Identity  # noqa: E402
from retrieval.slices import cached_slices  # noqa: E402
from training.loop import ValidationSet, query_precision, validation_set  # noqa: E402

_Y, _X = torch.meshgrid(torch.linspace(-1, 1, LAYOUT_SIDE), torch.linspace(-1, 1, LAYOUT_SIDE), indexing="ij")
TEMPLATE = _X * (1 + 0.3 * _Y) + 0.5 * _Y**2 + 0.21 * _X * _Y  # no symmetry of D4 maps it onto itself


def mean_ap(vset: ValidationSet, gallery: np.ndarray, queries: np.ndarray | None = None) -> float:
    """Anatomy mAP of unit-norm features (queries: the gallery's own query rows unless given)."""
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[vset.queries] if queries is None else queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return float(np.nanmean(query_precision(vset, queries, gallery)))


def canonical(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each thumbnail turned to the flip/turn that scores highest on a fixed asymmetric template (exactly D4-invariant
    up to ties), with the chosen element."""
    views = torch.stack([dihedral(t, k) for k in range(8)], 1)
    k = (views * TEMPLATE).sum((-2, -1)).squeeze(-1).argmax(1)
    return views[torch.arange(len(t)), k], k


def layer_features(model: DisentangledSiamese, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder layers 2–4 of one view (torchvision's feature extractor), pooled globally and on a 2×2 grid."""
    from torchvision.models.feature_extraction import create_feature_extractor

    taps = create_feature_extractor(model.encoder, return_nodes=["layer2", "layer3", "layer4"])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        maps = taps((x - model.mean) / model.std)
    out = {}
    for name, t in maps.items():
        out[f"{name}, global average"] = t.float().mean((2, 3))
        out[f"{name}, 2×2 grid"] = F.adaptive_avg_pool2d(t.float(), 2).flatten(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a fold model (final.pt) that never saw --dataset")
    parser.add_argument("--dataset", required=True, help="the held-out dataset(s), '+'-joined as in the fold's name")
    parser.add_argument("--archive", type=Path, default=os.environ.get("RETRIEVAL_SAMPLE_ARCHIVE"), help="the archive the fold trained on")
    parser.add_argument("--manifest", type=Path, help="its manifest (default: ARCHIVE/manifest.csv)")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="the folder `retrieval train --cache` filled (reused when its key matches)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_checkpoint(args.checkpoint)
    if args.archive is None:
        parser.error("--archive (or RETRIEVAL_SAMPLE_ARCHIVE) is required")
    data = cached_slices([args.archive], Identity(manifest=args.manifest or args.archive / "manifest.csv"), config["size"], args.cache)
    vset = validation_set(data.subset(np.isin(data.datasets, args.dataset.split("+"))), 0)
    cpu = torch.device("cpu")
    rows: list[tuple[str, float, float | None]] = []
    gallery = embed_model(model, vset.gallery, cpu)
    pooled, pooled_08 = gallery.anatomy, embed_model(model, vset.at_08, cpu).anatomy
    rows.append(("model: embedding (D4-pooled when the model says so)", mean_ap(vset, pooled), mean_ap(vset, pooled, pooled_08)))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        single = model.forward_once(vset.gallery)[0].float().numpy()
    rows.append(("model: embedding, one view", mean_ap(vset, single), None))
    rows += [(f"model: {name}", mean_ap(vset, f.numpy()), None) for name, f in layer_features(model, vset.gallery).items()]
    torch.manual_seed(0)
    rows += [(f"untrained ResNet-18: {name}", mean_ap(vset, f.numpy()), None)
             for name, f in layer_features(DisentangledSiamese("resnet18").eval(), vset.gallery).items()]
    thumbs, thumbs_08 = thumbnails(vset.gallery)[:, None], thumbnails(vset.at_08)[:, None]
    rows.append(("thumbnail, reader orientation", mean_ap(vset, thumbs.flatten(1).numpy()), mean_ap(vset, thumbs.flatten(1).numpy(), thumbs_08.flatten(1).numpy())))
    symmetric = torch.stack([dihedral(thumbs, k) for k in range(8)]).mean(0)
    rows.append(("thumbnail, mean over the 8 flips/turns", mean_ap(vset, symmetric.flatten(1).numpy()), None))
    (canon, k_clean), (canon_08, k_08) = canonical(thumbs), canonical(thumbs_08)
    canon, canon_08 = canon.flatten(1).numpy(), canon_08.flatten(1).numpy()
    rows.append(("thumbnail, canonical orientation", mean_ap(vset, canon), mean_ap(vset, canon, canon_08)))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    for weight in (0.7, 0.5, 0.3):
        both = np.concatenate([np.sqrt(weight) * unit(pooled), np.sqrt(1 - weight) * unit(canon)], 1)
        both_08 = np.concatenate([np.sqrt(weight) * unit(pooled_08), np.sqrt(1 - weight) * unit(canon_08)], 1)
        rows.append((f"model embedding ⊕ canonical thumbnail, model weight {weight}", mean_ap(vset, both), mean_ap(vset, both, both_08)))
    print(f"{args.dataset}: {len(vset.queries)} queries, {len(vset.gallery)} gallery slices, checkpoint {args.checkpoint}")
    print("| features | mAP α=0 | mAP α=0.8 |\n|---|---|---|")
    for name, clean, noisy in rows:
        print(f"| {name} | {clean:.3f} | {'' if noisy is None else format(noisy, '.3f')} |")
    same = float((k_clean[vset.queries] == k_08).float().mean())
    print(f"canonical orientation unchanged at α = 0.8: {same:.1%} of queries")
    clean_alpha = gallery.alpha
    spread_alpha = embed_model(model, vset.spread, cpu).alpha
    own = np.array([np.median(clean_alpha[row]) if row.any() else np.median(clean_alpha) for row in vset.relevant])  # the patient's other slices
    worse = vset.spread_alpha > TAU
    print(f"â of clean held-out slices: median {np.median(clean_alpha):.3f}; Spearman(â, α) {spearmanr(vset.spread_alpha, spread_alpha).statistic:.3f}")
    print(f"AUC of α > {TAU} against α ≤ {TAU}: â {roc_auc_score(worse, spread_alpha):.3f}, "
          f"â − median â of the patient's clean slices {roc_auc_score(worse, spread_alpha - own):.3f}")
    rules = [(f"â > {TAU}", spread_alpha > TAU)] + [(f"â − patient median > {m}", spread_alpha - own > m) for m in (0.05, 0.1, 0.2)]
    print("| rule | flags α > TAU (TPR) | flags α ≤ TAU (FPR) |\n|---|---|---|")
    for name, flagged in rules:
        print(f"| {name} | {flagged[worse].mean():.2f} | {flagged[~worse].mean():.2f} |")


if __name__ == "__main__":
    main()
