"""SSIM with an 11-tap Gaussian window (σ = 1.5), as piq.ssim and skimage's gaussian_weights=True."""

from __future__ import annotations

import functools

import torch

from eval.baselines.base import Baseline, Stats
from eval.baselines.filters import separable_valid

KERNEL_SIZE = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03  # with data range 1


@functools.cache
def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Normalised 1D Gaussian taps centred on the middle one."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def blur_valid(images: torch.Tensor) -> torch.Tensor:
    """Gaussian filter of (B, H, W) keeping only fully covered pixels: (B, H − 10, W − 10)."""
    return separable_valid(images, gaussian_kernel())


class SSIM(Baseline):
    """Mean structural similarity over the valid region (Wang et al. 2004); higher is closer."""

    name = "ssim"
    direction = "higher"
    identity = 1.0
    min_size = KERNEL_SIZE

    def stats(self, images: torch.Tensor) -> Stats:
        """Images with their local Gaussian means, squared means and variances."""
        mu = blur_valid(images)
        mu2 = mu * mu
        return Stats(tuple(images.shape[-2:]), {"x": images, "mu": mu, "mu2": mu2, "var": blur_valid(images * images) - mu2})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Only the local covariance needs a per-pair filter; the rest is precomputed, combined in place."""
        mu_qg = query["mu"][:, None] * gallery["mu"][None]
        structure = blur_valid((query["x"][:, None] * gallery["x"][None]).flatten(0, 1)).view(mu_qg.shape)
        structure.sub_(mu_qg).mul_(2).add_(K2**2).div_(query["var"][:, None] + gallery["var"][None] + K2**2)
        luminance = mu_qg.mul_(2).add_(K1**2).div_(query["mu2"][:, None] + gallery["mu2"][None] + K1**2)
        return luminance.mul_(structure).mean(dim=(-2, -1))
