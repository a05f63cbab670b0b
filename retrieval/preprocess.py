"""Pure, deterministic preprocessing from modality units to the network's 3×S×S input.

The order is: `resize_square` (still in modality units, so distortions can run after it),
then `intensity` (CT windows or MR percentile normalisation) to [0, 1].

CT: the three input channels see three windows (level, width in HU):
soft tissue (40, 400), lung (-600, 1500) and bone (400, 1800).
MR: intensities are scaled so that the 1st and 99.5th percentiles map to 0 and 1 (clipped),
the same for all three channels; this is invariant to a global intensity scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SIZE = 256
CT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 400.0), (-600.0, 1500.0), (400.0, 1800.0))
MR_PERCENTILES: tuple[float, float] = (1.0, 99.5)
CT_FOREGROUND_HU = -500.0  # tissue denser than this counts as foreground
MR_FOREGROUND_FRACTION = 0.1  # of the 99.5th percentile
MIN_FOREGROUND = 0.02  # a slice with less foreground than this fraction is empty background


def _as_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float32 tensor view of an array, without copying a float32 tensor."""
    if isinstance(pixels, torch.Tensor):
        return pixels.float()
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def square_shape(shape: tuple[int, int], size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """Rows and columns that fit `shape` (with physical `spacing`) inside size×size keeping aspect."""
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    height, width = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = size / max(height, width)
    return max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))


def resize_square(
    pixels: np.ndarray | torch.Tensor, size: int = DEFAULT_SIZE, spacing: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Resample a 2D slice into size×size (aspect kept by physical spacing, centred, padded with its minimum)."""
    image = _as_tensor(pixels)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        image = torch.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = square_shape((image.shape[0], image.shape[1]), size, spacing)
    resized = F.interpolate(image[None, None], size=(rows, cols), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    out = torch.full((size, size), float(image.min()), dtype=torch.float32)
    top, left = (size - rows) // 2, (size - cols) // 2
    out[top : top + rows, left : left + cols] = resized
    return out.numpy()


def ct_window(hu: torch.Tensor, level: float, width: float) -> torch.Tensor:
    """Linear window mapping [level - width/2, level + width/2] HU to [0, 1], clipped."""
    return ((hu - (level - width / 2.0)) / width).clamp(0.0, 1.0)


def mr_normalise(image: torch.Tensor, percentiles: tuple[float, float] = MR_PERCENTILES) -> torch.Tensor:
    """Scale each (…, H, W) image so its low/high percentiles map to 0/1, clipped; scale invariant."""
    flat = image.flatten(-2)
    q = torch.tensor([percentiles[0] / 100.0, percentiles[1] / 100.0], dtype=flat.dtype)
    bounds = torch.quantile(flat, q, dim=-1)  # (2, …)
    low, high = bounds[0][..., None, None], bounds[1][..., None, None]
    return ((image - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)


def intensity(images: np.ndarray | torch.Tensor, modality: str) -> torch.Tensor:
    """Map (…, H, W) images in modality units to (…, 3, H, W) network input in [0, 1]."""
    x = _as_tensor(images)
    if modality == "CT":
        channels = [ct_window(x, level, width) for level, width in CT_WINDOWS]
    else:
        channel = mr_normalise(x)
        channels = [channel, channel, channel]
    return torch.stack(channels, dim=-3)


def prepare(
    pixels: np.ndarray | torch.Tensor,
    modality: str,
    size: int = DEFAULT_SIZE,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Full preprocessing of one slice: resize to size×size, then intensity to 3×S×S float32."""
    return intensity(resize_square(pixels, size, spacing), modality).numpy()


def foreground_fraction(pixels: np.ndarray | torch.Tensor, modality: str) -> float:
    """Fraction of pixels that are tissue: HU above -500 for CT, above 10% of the 99.5th percentile for MR."""
    x = _as_tensor(pixels)
    if modality == "CT":
        mask = x > CT_FOREGROUND_HU
    else:
        low = float(x.min())
        high = float(torch.quantile(x.flatten(), MR_PERCENTILES[1] / 100.0))
        if high <= low:
            return 0.0
        mask = x > low + MR_FOREGROUND_FRACTION * (high - low)
    return float(mask.float().mean())


def is_empty(pixels: np.ndarray | torch.Tensor, modality: str) -> bool:
    """True for background-only slices (under 2% foreground, or constant): they are not indexed or trained on."""
    x = _as_tensor(pixels)
    if float(x.max()) == float(x.min()):
        return True
    return foreground_fraction(x, modality) < MIN_FOREGROUND


def network_input(images: torch.Tensor, modalities: np.ndarray) -> torch.Tensor:
    """(B, S, S) modality units → (B, 3, S, S) network input, per-slice modality."""
    out = torch.empty((images.shape[0], 3, *images.shape[1:]), dtype=torch.float32)
    for modality in np.unique(modalities):
        rows = torch.as_tensor(np.flatnonzero(modalities == modality))
        out[rows] = intensity(images[rows], str(modality))
    return out
