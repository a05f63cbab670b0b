"""One band-pass level of the complex steerable pyramid (Portilla & Simoncelli 2000), built in the Fourier domain.

Follows matlabPyrTools' buildSCFpyr: a raised-cosine high/low split in log-radius, then per level an
oriented, one-sided (hence complex, analytic) angular mask and a half-band low-pass with a crop of the
centred spectrum. The masks are products, so the filters of any one level compose into a single mask on
the cropped spectrum: a level costs one FFT of the image and one small inverse FFT per orientation.
Masks are evaluated in closed form rather than through buildSCFpyr's lookup tables (differences ~1e-5).
"""

from __future__ import annotations

import functools
import math

import torch


def frequency_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log2 radius (Nyquist = 1, the DC value copied from its left neighbour) and angle of a centred spectrum."""
    rows = (torch.arange(height, dtype=torch.float64) - height // 2) * 2 / height
    cols = (torch.arange(width, dtype=torch.float64) - width // 2) * 2 / width
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    radius = torch.hypot(r, c)
    radius[height // 2, width // 2] = radius[height // 2, width // 2 - 1]
    return torch.log2(radius), torch.atan2(r, c)


def half_band(size: int) -> tuple[int, int]:
    """Start and stop of the centred spectrum kept when a level is subsampled by two (as buildSCFpyr)."""
    start = math.ceil((size + 0.5) / 2) - math.ceil((math.ceil((size - 0.5) / 2) + 0.5) / 2)
    return start, start + math.ceil((size - 0.5) / 2)


def radial(log_radius: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High- and low-pass raised-cosine masks of `level` (0 = the initial split at half Nyquist)."""
    phase = (math.pi / 2) * (log_radius + level).clamp(-1.0, 0.0)
    return torch.cos(phase), torch.sin(phase).abs()


def angular(angle: torch.Tensor, orientations: int) -> torch.Tensor:
    """(K, h, w) one-sided cos^(K−1) masks of the K orientations, normalised so that the pyramid is a tight frame."""
    order = orientations - 1
    const = 2 ** (2 * order) * math.factorial(order) ** 2 / (orientations * math.factorial(2 * order))
    centres = torch.arange(orientations, dtype=torch.float64) * math.pi / orientations
    delta = torch.remainder(angle[None] - centres[:, None, None] + math.pi, 2 * math.pi) - math.pi
    return 2 * math.sqrt(const) * torch.cos(delta) ** order * (delta.abs() < math.pi / 2)


@functools.cache
def level_filters(height: int, width: int, level: int, orientations: int) -> tuple[slice, slice, torch.Tensor]:
    """Rows and columns of the centred spectrum that band-pass `level` (1-based) keeps, and its (K, h, w) filters."""
    log_radius, angle = frequency_grid(height, width)
    mask = radial(log_radius, 0)[1]
    top, left = 0, 0
    for below in range(1, level):
        (r0, r1), (c0, c1) = half_band(log_radius.shape[0]), half_band(log_radius.shape[1])
        top, left = top + r0, left + c0
        log_radius, angle, mask = log_radius[r0:r1, c0:c1], angle[r0:r1, c0:c1], mask[r0:r1, c0:c1]
        mask = mask * radial(log_radius, below)[1]
    mask = mask * radial(log_radius, level)[0]
    filters = (-1j) ** (orientations - 1) * mask * angular(angle, orientations)
    rows, cols = log_radius.shape
    return slice(top, top + rows), slice(left, left + cols), filters.to(torch.complex64)


def pyramid_level(images: torch.Tensor, level: int, orientations: int) -> torch.Tensor:
    """(B, H, W) real images → (B, K, h, w) complex coefficients of band-pass `level` of the pyramid."""
    rows, cols, filters = level_filters(images.shape[-2], images.shape[-1], level, orientations)
    spectrum = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))[:, rows, cols]
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum[:, None] * filters, dim=(-2, -1)))


def max_levels(height: int, width: int) -> int:
    """Band-pass levels an image of this size supports (buildSCFpyr's limit)."""
    return int(math.floor(math.log2(min(height, width)))) - 2
