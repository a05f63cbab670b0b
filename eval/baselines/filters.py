"""Separable 2D filtering of many small maps at once, the batch folded into conv channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def separable_valid(maps: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter the last two axes of (…, H, W) with taps ⊗ taps, keeping only fully covered pixels.

    All leading axes become channels of one `groups=` convolution, several times faster here than a batch
    of one-channel images.
    """
    *lead, height, width = maps.shape
    size = taps.numel()
    x = maps.reshape(1, -1, height, width)
    channels = x.shape[1]
    x = F.conv2d(x, taps.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    x = F.conv2d(x, taps.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return x.view(*lead, height - size + 1, width - size + 1)
