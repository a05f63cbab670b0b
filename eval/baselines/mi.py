"""Normalised mutual information from a joint histogram, as skimage.metrics.normalized_mutual_information.

NMI = (H(X) + H(Y)) / H(X, Y) (Studholme et al. 1999), in [1, 2]; higher is closer. Each image is
binned into 100 equal bins between its own minimum and maximum exactly as numpy.histogramdd does,
so the joint histogram of a pair is one `bincount` of precomputed bin indices.
"""

from __future__ import annotations

import torch

from eval.baselines.base import Baseline, Stats

BINS = 100


def bin_indices(images: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """(B, N) bin of each pixel between each image's own min and max, with numpy.histogramdd's edges and ties."""
    flat = images.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    flat_image = low == high
    low, high = torch.where(flat_image, low - 0.5, low), torch.where(flat_image, high + 0.5, high)
    step = (high - low) / bins  # same float32 arithmetic as numpy.linspace on float32 bounds
    edges = torch.arange(bins + 1, dtype=flat.dtype)[None] * step[:, None] + low[:, None]
    edges[:, -1] = high
    index = torch.searchsorted(edges, flat, right=True) - 1
    return index.clamp_max(bins - 1).to(torch.uint8 if bins <= 256 else torch.int64)


def entropy(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Shannon entropy (nats) of histograms along the last axis, from counts summing to `total`."""
    counts = counts.to(torch.float64)
    return torch.log(torch.tensor(float(total), dtype=torch.float64)) - torch.special.xlogy(counts, counts).sum(-1) / total


class NMI(Baseline):
    """Normalised mutual information with 100 bins per image."""

    name = "mi"
    direction = "higher"
    identity = 2.0
    gallery_block = 16  # keeps the block's joint histograms (16 × 100² counts) in cache

    def stats(self, images: torch.Tensor) -> Stats:
        """Each pixel's bin and each image's marginal entropy."""
        bins = bin_indices(images)
        marginal = torch.zeros(len(bins), BINS, dtype=torch.int64).scatter_add_(1, bins.long(), torch.ones_like(bins, dtype=torch.int64))
        return Stats(tuple(images.shape[-2:]), {"bins": bins, "entropy": entropy(marginal, bins.shape[1])})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Joint histograms of all pairs in one bincount, then (H_q + H_g) / H_qg (2 when both images are constant)."""
        q, g, pixels = len(query), len(gallery), query["bins"].shape[1]
        offsets = torch.arange(q * g).view(q, g, 1) * (BINS * BINS)
        joint = query["bins"].long()[:, None] * BINS + gallery["bins"].long()[None] + offsets
        counts = torch.bincount(joint.flatten(), minlength=q * g * BINS * BINS).view(q, g, BINS * BINS)
        joint_entropy = entropy(counts, pixels)
        marginals = query["entropy"][:, None] + gallery["entropy"][None]
        nmi = torch.where(joint_entropy > 0, marginals / joint_entropy.clamp_min(1e-300), 2.0)
        return nmi.float()
