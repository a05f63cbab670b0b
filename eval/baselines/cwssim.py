"""Complex-wavelet SSIM (Sampat et al. 2009) on the coarsest band of a 4-level, 8-orientation steerable pyramid.

Per orientation band and 7×7 window: (2|Σ c_q c_g*| + K) / (Σ|c_q|² + Σ|c_g|² + K), window sums taken
as means as in the authors' MATLAB cwssim_index; the map is averaged with a Gaussian (σ = band height / 4)
and the bands are averaged. Higher is closer. Each image's band coefficients and local energies are cached.
"""

from __future__ import annotations

import functools

import torch

from eval.baselines.base import Baseline, Stats
from eval.baselines.filters import separable_valid
from eval.baselines.steerable import max_levels, pyramid_level

LEVELS = 4
ORIENTATIONS = 8
WINDOW = 7


def box_mean(maps: torch.Tensor) -> torch.Tensor:
    """Valid 7×7 means over the last two axes of any (…, h, w) real tensor."""
    return separable_valid(maps, torch.full((WINDOW,), 1.0 / WINDOW))


@functools.cache
def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """Normalised Gaussian over the valid index map of an h×w band, σ = h/4 (fspecial('gaussian', [h w] − 6, h/4))."""
    rows = torch.arange(height - WINDOW + 1, dtype=torch.float64) - (height - WINDOW) / 2
    cols = torch.arange(width - WINDOW + 1, dtype=torch.float64) - (width - WINDOW) / 2
    weights = torch.exp(-(rows[:, None] ** 2 + cols[None] ** 2) / (2 * (height / 4) ** 2))
    return (weights / weights.sum()).float()


class CWSSIM(Baseline):
    """CW-SSIM with K = 0 (the reference's default); windows where both images have no energy score 1."""

    name = "cwssim"
    direction = "higher"
    identity = 1.0
    min_size = 64  # four levels need at least 64 pixels (buildSCFpyr's limit), leaving 8×8 bands

    def __init__(self, k: float = 0.0) -> None:
        self.k = k

    def stats(self, images: torch.Tensor) -> Stats:
        """Coarsest band-pass coefficients and their local energies."""
        if max_levels(*images.shape[-2:]) < LEVELS:
            raise ValueError(f"cwssim: images of {tuple(images.shape[-2:])} are too small for {LEVELS} levels")
        bands = pyramid_level(images, LEVELS, ORIENTATIONS)
        real, imag = bands.real.contiguous(), bands.imag.contiguous()
        return Stats(tuple(images.shape[-2:]), {"re": real, "im": imag, "energy": box_mean(real * real + imag * imag)})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Windowed complex correlation of every pair of bands, then the Gaussian-weighted, band-averaged index."""
        q_re, q_im, g_re, g_im = query["re"][:, None], query["im"][:, None], gallery["re"][None], gallery["im"][None]
        cross = torch.empty((2, len(query), len(gallery), *g_re.shape[2:]))  # q · conj(g): real, imaginary
        torch.mul(q_re, g_re, out=cross[0]).addcmul_(q_im, g_im)
        torch.mul(q_im, g_re, out=cross[1]).addcmul_(q_re, g_im, value=-1.0)
        local = box_mean(cross)
        numerator = 2 * torch.hypot(local[0], local[1]) + self.k
        denominator = query["energy"][:, None] + gallery["energy"][None] + self.k
        index = torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
        weights = gaussian_weights(*query["re"].shape[-2:])
        return (index * weights).sum(dim=(-2, -1)).mean(-1)
