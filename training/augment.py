"""Seeded training augmentation: geometry on the working grid, then intensity, TorchIO-style but batched.

Every parameter is drawn from the sampler's generator for one step, so batch k stays a pure function of
(seed, k) and a resumed run replays exactly. The order inside a view is: geometry (modality units) →
distortion at α → intensity (CT window jitter in HU, MR gamma on the normalised image). Geometry comes
before the distortion so that noise keeps its physical texture on the working grid; intensity comes after,
because it models how a slice is displayed and scaled, not how it was acquired.

Geometry: a random element of the dihedral group D4 (flips and 90° turns: readers return arrays in any
orientation), a small rotation, an anisotropic zoom (random resized crop) and a shift. Intensity: a CT gain
and offset in HU (window level and width vary between sites), an MR gamma and contrast. A bias field is left
out on purpose: it is part of the MR distortion at α > 0, so adding one to clean views would teach â to
ignore it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; `geometric` / `intensity` switch each family off for ablations."""

    geometric: bool = True
    intensity: bool = True
    max_rotation_deg: float = 12.0
    zoom: tuple[float, float] = (0.75, 1.2)  # side of the sampled field relative to the slice (< 1 zooms in)
    aspect: float = 0.12  # log-uniform anisotropy of the zoom
    max_shift: float = 0.1  # of half the field
    ct_gain: float = 0.08  # HU scaled by 1 ± gain
    ct_offset_hu: float = 30.0
    mr_log_gamma: float = 0.35  # gamma = exp(U(−, +))
    mr_contrast: float = 0.15  # (x − 0.5)·(1 ± c) + 0.5


@dataclass(frozen=True)
class AugmentParams:
    """Per-view transform parameters (all arrays of length B); `identity(B)` changes nothing."""

    d4: np.ndarray
    angle: np.ndarray
    zoom_x: np.ndarray
    zoom_y: np.ndarray
    shift_x: np.ndarray
    shift_y: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    gamma: np.ndarray
    contrast: np.ndarray

    @staticmethod
    def identity(count: int) -> "AugmentParams":
        """Parameters that leave every view unchanged."""
        zeros, ones = np.zeros(count), np.ones(count)
        return AugmentParams(np.zeros(count, dtype=np.int64), zeros, ones, ones, zeros, zeros, ones, zeros, ones, ones)

    def take(self, rows: np.ndarray) -> "AugmentParams":
        """The parameters of some views."""
        return AugmentParams(*(getattr(self, f.name)[rows] for f in fields(self)))


def sample_params(rng: np.random.Generator, count: int, config: AugmentConfig | None) -> AugmentParams:
    """Draw `count` parameter sets from `rng` (always the same number of draws, so switching a family off keeps the rest)."""
    if config is None:
        return AugmentParams.identity(count)
    d4 = rng.integers(0, 8, size=count)
    angle = np.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size=count))
    zoom = np.exp(rng.uniform(np.log(config.zoom[0]), np.log(config.zoom[1]), size=count))
    aspect = np.exp(rng.uniform(-config.aspect, config.aspect, size=count))
    shift = rng.uniform(-config.max_shift, config.max_shift, size=(2, count))
    gain = 1.0 + rng.uniform(-config.ct_gain, config.ct_gain, size=count)
    offset = rng.uniform(-config.ct_offset_hu, config.ct_offset_hu, size=count)
    gamma = np.exp(rng.uniform(-config.mr_log_gamma, config.mr_log_gamma, size=count))
    contrast = 1.0 + rng.uniform(-config.mr_contrast, config.mr_contrast, size=count)
    identity = AugmentParams.identity(count)
    geometric = (d4, angle, zoom * aspect, zoom / aspect, shift[0], shift[1])
    intensity = (gain, offset, gamma, contrast)
    if not config.geometric:
        geometric = (identity.d4, identity.angle, identity.zoom_x, identity.zoom_y, identity.shift_x, identity.shift_y)
    if not config.intensity:
        intensity = (identity.gain, identity.offset, identity.gamma, identity.contrast)
    return AugmentParams(*geometric, *intensity)


def _d4_matrix(k: int) -> np.ndarray:
    """2×2 matrix (on (x, y) sampling coordinates) of `retrieval.model.dihedral(·, k)`."""
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # one torch.rot90 quarter turn of the image, as a map of output to input coordinates
    matrix = np.linalg.matrix_power(turn, k % 4)
    if k >= 4:
        matrix = matrix @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    return matrix


def geometric(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Warp (B, S, S) slices in modality units; outside the slice is filled with each slice's minimum."""
    if not (np.any(params.d4) or np.any(params.angle) or np.any(params.zoom_x != 1) or np.any(params.zoom_y != 1)
            or np.any(params.shift_x) or np.any(params.shift_y)):
        return images
    thetas = []
    for i in range(images.shape[0]):
        c, s = math.cos(params.angle[i]), math.sin(params.angle[i])
        linear = _d4_matrix(int(params.d4[i])) @ np.array([[c, -s], [s, c]]) @ np.diag([params.zoom_x[i], params.zoom_y[i]])
        thetas.append(np.concatenate([linear, [[params.shift_x[i]], [params.shift_y[i]]]], axis=1))
    theta = torch.as_tensor(np.stack(thetas), dtype=torch.float32)
    floor = images.amin(dim=(1, 2), keepdim=True)
    grid = F.affine_grid(theta, [images.shape[0], 1, *images.shape[1:]], align_corners=False)
    warped = F.grid_sample((images - floor)[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[:, 0] + floor


def ct_intensity(hu: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """CT gain and offset in HU (B, S, S): the windows then see a slightly different level and width."""
    gain = torch.as_tensor(params.gain, dtype=hu.dtype).view(-1, 1, 1)
    offset = torch.as_tensor(params.offset, dtype=hu.dtype).view(-1, 1, 1)
    return hu * gain + offset


def mr_intensity(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """MR gamma then contrast on the normalised (B, 3, S, S) input in [0, 1]."""
    gamma = torch.as_tensor(params.gamma, dtype=x.dtype).view(-1, 1, 1, 1)
    contrast = torch.as_tensor(params.contrast, dtype=x.dtype).view(-1, 1, 1, 1)
    return ((x.clamp_min(0.0) ** gamma - 0.5) * contrast + 0.5).clamp(0.0, 1.0)
