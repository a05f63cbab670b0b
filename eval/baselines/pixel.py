"""Pixelwise baselines that reduce to one matrix product once each image's moments are known."""

from __future__ import annotations

import torch

from eval.baselines.base import Baseline, Stats


class MSE(Baseline):
    """Mean squared error over pixels, as skimage.metrics.mean_squared_error; lower is closer."""

    name = "mse"
    direction = "lower"
    identity = 0.0
    query_block = 256
    gallery_block = 1024

    def stats(self, images: torch.Tensor) -> Stats:
        """Centred pixels (so the expansion below loses little precision) and their squared norms."""
        flat = images.flatten(1) - 0.5
        return Stats(tuple(images.shape[-2:]), {"x": flat, "norm": (flat * flat).sum(1)})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """‖q − g‖² / N expanded as ‖q‖² + ‖g‖² − 2 q·g."""
        cross = query["x"] @ gallery["x"].T
        squared = query["norm"][:, None] + gallery["norm"][None, :] - 2.0 * cross
        return squared.clamp_min(0.0) / query["x"].shape[1]


class NCC(Baseline):
    """Normalised cross-correlation (Pearson r of the pixels, as skimage.feature.match_template); higher is closer."""

    name = "ncc"
    direction = "higher"
    identity = 1.0
    query_block = 256
    gallery_block = 1024

    def stats(self, images: torch.Tensor) -> Stats:
        """Pixels with zero mean and unit norm; a constant image becomes all zeros (correlation 0)."""
        return Stats(tuple(images.shape[-2:]), {"z": standardise(images.flatten(1))})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Pearson r as the dot product of standardised pixels."""
        return query["z"] @ gallery["z"].T


def standardise(flat: torch.Tensor) -> torch.Tensor:
    """Rows with zero mean and unit Euclidean norm (zero rows stay zero), so dot products are Pearson r."""
    centred = flat - flat.mean(1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, centred / norm.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
