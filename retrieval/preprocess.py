"""Pure, deterministic preprocessing from modality units to the network's 3×S×S input.

The order is: `resize_square` (still in modality units, so distortions can run after it),
then `intensity` (CT windows or MR percentile normalisation) to [0, 1].

CT: the three input channels see three windows (level, width in HU):
soft tissue (40, 400), lung (-600, 1500) and bone (400, 1800).
MR: intensities are scaled so that the 1st and 99.5th percentiles map to 0 and 1 (clipped),
the same for all three channels; this is invariant to a global intensity scale.

Everything is numpy (torch only converts at the edges, imported lazily), so the query path and the
reader workers never import torch or wait on its thread pool.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_SIZE = 256
CT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 400.0), (-600.0, 1500.0), (400.0, 1800.0))
MR_PERCENTILES: tuple[float, float] = (1.0, 99.5)
STORED_CT_INTERCEPT = -1024.0  # the usual rescale intercept of CT stored as unsigned values
STORED_CT_FLOOR = -50.0  # a whole CT slice in HU has values below this besides its padding (air, lung, fat); a crop inside soft tissue may not
STORED_CT_BODY = 700.0  # stored with intercept −1,024, a body's soft tissue reads about 1,000–1,100; in HU a soft-tissue crop stays far below
CT_FOREGROUND_HU = -500.0  # tissue denser than this counts as foreground
MR_FOREGROUND_FRACTION = 0.1  # of the 99.5th percentile
MIN_FOREGROUND = 0.02  # a slice with less foreground than this fraction is empty background


def _as_array(pixels: Any) -> np.ndarray:
    """Float32 array of an array or a torch tensor (any device), without copying a float32 array."""
    if hasattr(pixels, "detach"):
        pixels = pixels.detach().cpu().numpy()
    return np.asarray(pixels, dtype=np.float32)


def _slice_array(pixels: Any) -> np.ndarray:
    """`_as_array` of one slice with its non-finite pixels set to its smallest finite value, the padding value: a
    resampled volume is NaN outside the field of view it was resampled from (nibabel's `resampled_anat_moved.nii`),
    and that is background, not a reason to call the slice empty or to pad it with 0 HU of water."""
    image = _as_array(pixels)
    finite = np.isfinite(image)
    if finite.all():
        return image
    return np.where(finite, image, image[finite].min() if finite.any() else 0.0).astype(np.float32)


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (n_out × taps) of antialiased bilinear resampling, as torch's `antialias=True` (PIL's).

    A triangle filter of half-width max(1, n_in / n_out) input samples centred on each output sample, normalised.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = scale * (np.arange(n_out) + 0.5)
    low = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    high = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    index = low[:, None] + np.arange(int((high - low).max()))
    weights = np.clip(1.0 - np.abs((index - centre[:, None] + 0.5) / support), 0.0, None)
    weights[index >= high[:, None]] = 0.0
    return np.minimum(index, n_in - 1), (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def quantiles(x: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles over the last axis with linear interpolation (as np.quantile and torch.quantile), by one partition: (len(qs), …)."""
    n = x.shape[-1]
    position = np.asarray(qs, dtype=np.float64) * (n - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    part = np.partition(x, np.unique(np.concatenate([low, high])), axis=-1)
    below, above = np.moveaxis(part[..., low], -1, 0), np.moveaxis(part[..., high], -1, 0)
    fraction = (position - low).reshape((-1,) + (1,) * (x.ndim - 1))
    return (below + fraction * (above - below)).astype(np.float32)


def square_shape(shape: tuple[int, int], size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """Rows and columns that fit `shape` (with physical `spacing`) inside size×size keeping aspect."""
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    height, width = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = size / max(height, width)
    return max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))


def resize_square(
    pixels: "np.ndarray | torch.Tensor", size: int = DEFAULT_SIZE, spacing: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Resample a 2D slice into size×size (aspect kept by physical spacing, centred, padded with its minimum)."""
    image = _slice_array(pixels)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {tuple(image.shape)}")
    rows, cols = square_shape((image.shape[0], image.shape[1]), size, spacing)
    (row_index, row_weights), (col_index, col_weights) = _taps(image.shape[0], rows), _taps(image.shape[1], cols)
    resized = np.einsum("ot,otc->oc", row_weights, image[row_index])
    resized = np.einsum("ct,rct->rc", col_weights, resized[:, col_index])
    out = np.full((size, size), image.min(), dtype=np.float32)
    top, left = (size - rows) // 2, (size - cols) // 2
    out[top : top + rows, left : left + cols] = resized
    return out


def resize_factor(shape: tuple[int, int], size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """How many of a slice's own pixels `resize_square` averages into one of the grid's, per side (the geometric mean
    of the two axes): about 8 for a 512² slice on a 64² grid, 1 for a 64² crop, under 1 when it upsamples.

    The α estimator reads it beside the network input: the resize averages native noise down by about this factor,
    so the same noise on the grid means a clean crop at 1 and a noisy scan at 8 (`retrieval.alpha`)."""
    rows, cols = square_shape(shape, size, spacing)
    return float(np.sqrt(shape[0] * shape[1] / (rows * cols)))


def to_grid(pixels: "np.ndarray | torch.Tensor", size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, float]:
    """`resize_square` and the slice's `resize_factor` together: every place a slice goes onto the grid keeps the
    factor the α estimator reads beside it."""
    grid = resize_square(pixels, size, spacing)  # refuses anything but a 2D slice first
    return grid, resize_factor(tuple(pixels.shape), size, spacing)


def native_view(
    pixels: "np.ndarray | torch.Tensor", size: int, spacing: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """The slice as a zoomed or coarser acquisition would give it at size×size, drawn from `rng`, and its
    `resize_factor`: a crop of 48 pixels up to half the slice around a pixel with signal, or the whole slice
    decimated (every k-th pixel) before the resize.

    Either way its per-pixel noise is the scanner's, averaged down less than a whole slice's: such views teach the α
    estimator what clean and distorted slices look like at factors below a whole slice's (`training.alpha_fit`).
    """
    image = _slice_array(pixels)
    height, width = image.shape
    if rng.random() < 0.5:
        side = min(height, width, int(np.exp(rng.uniform(np.log(48), np.log(max(49, min(height, width) // 2))))))
        rows, cols = np.nonzero(image > np.median(image))
        pick = int(rng.integers(len(rows))) if len(rows) else 0
        top = int(np.clip((rows[pick] if len(rows) else height // 2) - side // 2, 0, height - side))
        left = int(np.clip((cols[pick] if len(cols) else width // 2) - side // 2, 0, width - side))
        view = image[top : top + side, left : left + side]
    else:
        step = int(rng.integers(1, max(1, max(height, width) // size) + 1))
        view, spacing = image[::step, ::step], (spacing[0] * step, spacing[1] * step)
    return to_grid(view, size, spacing)


def looks_like_stored_ct(pixels: "np.ndarray | torch.Tensor") -> bool:
    """Whether a CT slice holds stored pixel values instead of HU: nothing but its minimum (the padding) lies below
    STORED_CT_FLOOR, and something reaches STORED_CT_BODY. In HU the air around and inside a body reads about −1,000
    (every slice of the sample archive goes below −1,000 besides its padding); stored with intercept −1,024 the same
    air reads about 0 and soft tissue about 1,000, so a crop inside soft tissue (no air or fat) reads as HU while it
    stays below STORED_CT_BODY. A crop of soft tissue and bone alone in HU is the case this cannot tell apart."""
    image = _slice_array(pixels)
    rest = image[image > image.min()] if image.size else image
    return bool(rest.size) and float(rest.min()) >= STORED_CT_FLOOR and float(rest.max()) >= STORED_CT_BODY


def ct_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Linear window mapping [level - width/2, level + width/2] HU to [0, 1], clipped."""
    return np.clip((hu - np.float32(level - width / 2.0)) / np.float32(width), 0.0, 1.0)


def mr_normalise(image: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """Scale each (…, H, W) image so its low/high percentiles map to 0/1, clipped; scale invariant."""
    bounds = quantiles(image.reshape(*image.shape[:-2], -1), (percentiles[0] / 100.0, percentiles[1] / 100.0))
    low, high = bounds[0][..., None, None], bounds[1][..., None, None]
    return np.clip((image - low) / np.maximum(high - low, np.float32(1e-6)), 0.0, 1.0)


def intensity_array(images: "np.ndarray | torch.Tensor", modality: str) -> np.ndarray:
    """Map (…, H, W) images in modality units to (…, 3, H, W) float32 network input in [0, 1]."""
    x = _as_array(images)
    if modality == "CT":
        return np.stack([ct_window(x, level, width) for level, width in CT_WINDOWS], axis=-3)
    channel = mr_normalise(x)
    return np.stack([channel, channel, channel], axis=-3)


def intensity(images: "np.ndarray | torch.Tensor", modality: str) -> "torch.Tensor":
    """`intensity_array` as a CPU torch tensor, for the torch model and the training loop."""
    import torch

    return torch.from_numpy(intensity_array(images, modality))


def prepare(
    pixels: "np.ndarray | torch.Tensor",
    modality: str,
    size: int = DEFAULT_SIZE,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Full preprocessing of one slice: resize to size×size, then intensity to 3×S×S float32."""
    return intensity_array(resize_square(pixels, size, spacing), modality)


def prepare_slice(
    pixels: "np.ndarray | torch.Tensor",
    modality: str,
    size: int = DEFAULT_SIZE,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, float]:
    """`prepare` and the slice's `resize_factor`: the network input and what the α estimator reads beside it."""
    grid, factor = to_grid(pixels, size, spacing)
    return intensity_array(grid, modality), factor


def foreground_fraction(pixels: "np.ndarray | torch.Tensor", modality: str) -> float:
    """Fraction of pixels that are tissue: HU above -500 for CT, above 10% of the 99.5th percentile for MR."""
    return _foreground(_slice_array(pixels), modality)


def _foreground(x: np.ndarray, modality: str) -> float:
    """`foreground_fraction` of a finite float32 slice."""
    if modality == "CT":
        mask = x > CT_FOREGROUND_HU
    else:
        low = float(x.min())
        high = float(quantiles(x.ravel(), (MR_PERCENTILES[1] / 100.0,))[0])
        if high <= low:
            return 0.0
        mask = x > low + MR_FOREGROUND_FRACTION * (high - low)
    return float(mask.mean())


def is_empty(pixels: "np.ndarray | torch.Tensor", modality: str) -> bool:
    """True for background-only slices (under 2% foreground, or constant): they are not indexed or trained on."""
    x = _slice_array(pixels)
    if float(x.max()) == float(x.min()):
        return True
    return _foreground(x, modality) < MIN_FOREGROUND


def network_input(images: "torch.Tensor", modalities: np.ndarray) -> "torch.Tensor":
    """(B, S, S) modality units → (B, 3, S, S) network input, per-slice modality."""
    import torch

    x = _as_array(images)
    out = np.empty((x.shape[0], 3, *x.shape[1:]), dtype=np.float32)
    for modality in np.unique(modalities):
        rows = np.flatnonzero(modalities == modality)
        out[rows] = intensity_array(x[rows], str(modality))
    return torch.from_numpy(out)
