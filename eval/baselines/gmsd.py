"""Gradient Magnitude Similarity Deviation (Xue et al. 2014), as piq.gmsd; lower is closer.

The gradient-based baseline ("grad"): both images are averaged 2×2, their Prewitt gradient
magnitudes m compared pixel by pixel as GMS = (2 m_q m_g + c) / (m_q² + m_g² + c), c = 170 / 255²,
and the score is the standard deviation of that map. Gradient magnitudes are computed once per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eval.baselines.base import Baseline, Stats

CONSTANT = 170 / 255.0**2


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B, ⌈H/2⌉·⌈W/2⌉): 2×2 average (odd sizes zero-padded), then Prewitt |∇| with zero borders."""
    pad = max(images.shape[-2] % 2, images.shape[-1] % 2)
    small = F.avg_pool2d(F.pad(images[:, None], (0, pad, 0, pad)), kernel_size=2)
    prewitt = torch.tensor([[-1.0, 0.0, 1.0]] * 3) / 3
    kernels = torch.stack([prewitt, prewitt.T])[:, None]
    gradients = F.conv2d(small, kernels, padding=1)
    return gradients.pow(2).sum(1).sqrt().flatten(1)


class GMSD(Baseline):
    """GMSD on 2×-downsampled images with Prewitt gradients."""

    name = "grad"
    direction = "lower"
    identity = 0.0

    def stats(self, images: torch.Tensor) -> Stats:
        """Each image's gradient magnitude map and its square."""
        magnitude = gradient_magnitude(images)
        return Stats(tuple(images.shape[-2:]), {"m": magnitude, "m2": magnitude * magnitude})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Standard deviation of the gradient magnitude similarity map of every pair."""
        numerator = 2 * query["m"][:, None] * gallery["m"][None] + CONSTANT
        similarity = numerator / (query["m2"][:, None] + gallery["m2"][None] + CONSTANT)
        return similarity.std(dim=-1, correction=0)
