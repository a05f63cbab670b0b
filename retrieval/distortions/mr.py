"""MR acquisition corruption in k-space: bias field, motion ghosting, truncation and thermal noise.

Each component rises linearly with α (the constants below are the values at α = 1):
- bias field: receive-coil shading, exp(BIAS·α·b(x, y)), b a random cubic polynomial scaled to max |b| = 1
  (α = 1: intensities ×0.67 … ×1.49 across the field of view);
- motion ghosting: a random GHOST_LINES·α of the phase-encoding lines are acquired with the object
  shifted by SHIFT·α of the field of view (a phase ramp on those lines), giving ghosts along the
  phase-encoding axis (α = 1: 30% of the lines, 3% of the field of view);
- truncation: only the central 1 − TRUNCATION·α of k-space is kept along both axes (blur and Gibbs
  ringing; α = 1: the central 40%);
- thermal noise: complex Gaussian noise on the acquired samples whose image-domain σ is NOISE·α
  of the slice's 99th intensity percentile (scale invariant; α = 1: 6%); the magnitude image
  therefore carries Rician noise.
A slice with negative values is shifted to a minimum of 0 first and shifted back after; the
output is the magnitude image.
Draws, in order from the per-slice generator: phase-encoding axis, motion direction, bias
coefficients, line selection, noise. None of them depends on α, so with one seed a larger α adds
ghost lines and scales the same artefacts up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

BIAS = 0.4
GHOST_LINES = 0.3
SHIFT = 0.03
TRUNCATION = 0.6
NOISE = 0.06
SCALE_QUANTILE = 0.99
BIAS_DEGREE = 3


@dataclass(frozen=True)
class MRNuisance:
    """The α-independent random parameters of one MR corruption."""

    phase_axis: int  # 0: phase encoding along rows (ghosts run vertically), 1: along columns
    motion_angle: float  # direction of the in-plane shift, radians
    bias_coefficients: tuple[float, ...]  # Legendre P_i(y)·P_j(x) coefficients, 1 ≤ i + j ≤ 3


def draw_nuisance(generator: torch.Generator) -> MRNuisance:
    """Draw the nuisance parameters first from a slice's generator (so they depend on its seed only)."""
    axis = int(torch.randint(2, (1,), generator=generator))
    angle = float(torch.rand((), generator=generator)) * 2.0 * math.pi
    coefficients = torch.rand(len(_legendre_terms()), generator=generator) * 2.0 - 1.0
    return MRNuisance(axis, angle, tuple(float(c) for c in coefficients))


def settings(alpha: float) -> dict[str, float]:
    """The α-dependent strengths of each component (for records and documentation)."""
    return {
        "bias_log_amplitude": BIAS * alpha,
        "ghost_line_fraction": GHOST_LINES * alpha,
        "shift_fov_fraction": SHIFT * alpha,
        "kspace_fraction": 1.0 - TRUNCATION * alpha,
        "noise_sigma_fraction": NOISE * alpha,
    }


@lru_cache(maxsize=1)
def _legendre_terms() -> tuple[tuple[int, int], ...]:
    """(i, j) degree pairs of the bias polynomial P_i(y)·P_j(x), constant term excluded."""
    return tuple((i, j) for i in range(BIAS_DEGREE + 1) for j in range(BIAS_DEGREE + 1) if 1 <= i + j <= BIAS_DEGREE)


@lru_cache(maxsize=8)
def _legendre(n: int) -> torch.Tensor:
    """(4, n) Legendre polynomials P_0 … P_3 on n points spanning [−1, 1]."""
    u = torch.linspace(-1.0, 1.0, n)
    return torch.stack([torch.ones_like(u), u, 1.5 * u**2 - 0.5, 2.5 * u**3 - 1.5 * u])


def _bias_fields(nuisance: list[MRNuisance], alphas: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) smooth multiplicative fields exp(BIAS·α·b), b zero-mean with max |b| = 1."""
    coefficients = torch.zeros((len(nuisance), BIAS_DEGREE + 1, BIAS_DEGREE + 1))
    for sample, n in enumerate(nuisance):
        for (i, j), value in zip(_legendre_terms(), n.bias_coefficients):
            coefficients[sample, i, j] = value
    # separable and elementwise (no matmul), so a slice's field does not depend on its batch
    per_row = (coefficients[..., None] * _legendre(shape[1])[None, None]).sum(2)  # (B, 4, W)
    log_field = (_legendre(shape[0])[None, :, :, None] * per_row[:, :, None, :]).sum(1)
    log_field = log_field - log_field.mean(dim=(1, 2), keepdim=True)
    log_field = log_field / log_field.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return torch.exp(BIAS * alphas[:, None, None] * log_field)


def _kspace_factors(
    nuisance: list[MRNuisance], lines: torch.Tensor, alphas: torch.Tensor, shape: tuple[int, int], mask: torch.Tensor
) -> torch.Tensor:
    """(B, H, W) complex k-space factors: truncation mask times a shift's phase ramp on the selected lines."""
    angles = torch.tensor([n.motion_angle for n in nuisance])
    shift_y = (SHIFT * alphas * torch.sin(angles))[:, None, None]  # fractions of the field of view
    shift_x = (SHIFT * alphas * torch.cos(angles))[:, None, None]
    ky = torch.fft.fftfreq(shape[0], 1.0 / shape[0])[None, :, None]  # k-space indices
    kx = torch.fft.fftfreq(shape[1], 1.0 / shape[1])[None, None, :]
    chosen = lines < GHOST_LINES * alphas[:, None]
    rows = torch.tensor([n.phase_axis == 0 for n in nuisance])[:, None, None]
    chosen = torch.where(rows, chosen[:, : shape[0], None], chosen[:, None, : shape[1]])
    phase = torch.where(chosen, -2.0 * math.pi * (ky * shift_y + kx * shift_x), 0.0)
    return torch.polar(mask, phase)


def corrupt(images: torch.Tensor, alphas: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Corrupt (B, H, W) float32 magnitude images at severities α (B,) with one generator per slice."""
    batch, height, width = images.shape
    nuisance = [draw_nuisance(g) for g in generators]
    lines = torch.stack([torch.rand(max(height, width), generator=g) for g in generators])
    noise = torch.empty((batch, height, width, 2))
    for sample, generator in zip(noise, generators):
        sample.normal_(generator=generator)

    offset = images.flatten(1).amin(1).clamp(max=0.0)[:, None, None]
    positive = images - offset
    every_fourth = positive.flatten(1)[:, ::4]  # the scale needs no more than a subsample
    scale = every_fourth.kthvalue(round(SCALE_QUANTILE * (every_fourth.shape[1] - 1)) + 1, dim=1).values

    kept = (1.0 - TRUNCATION * alphas)[:, None, None] / 2.0
    fy, fx = torch.fft.fftfreq(height)[:, None], torch.fft.fftfreq(width)[None, :]
    mask = ((fy.abs() <= kept) & (fx.abs() <= kept)).float()
    sigma = NOISE * alphas * scale / mask.mean(dim=(1, 2)).sqrt()
    kspace = torch.fft.fft2(positive * _bias_fields(nuisance, alphas, (height, width)), norm="ortho")
    kspace = kspace * _kspace_factors(nuisance, lines, alphas, (height, width), mask)
    kspace = kspace + torch.view_as_complex(noise) * (sigma[:, None, None] * mask)
    return torch.fft.ifft2(kspace, norm="ortho").abs() + offset
