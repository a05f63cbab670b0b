"""The baseline interface: a direction, per-image statistics computed once, chunked brute-force scoring.

A baseline turns images into `Stats` (means, variances, gradients, pyramid bands, histogram bins …)
once; `score` then compares every query with every gallery image in small blocks, because large
temporaries cost more in page faults than they save in calls on these machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

Direction = Literal["lower", "higher"]


class BaselineUnavailable(RuntimeError):
    """A baseline that cannot run here (e.g. DINO without weights); `reason` goes into the report."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: not run ({reason})")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Stats:
    """Per-image statistics of a batch (leading dimension = image) and the image shape they came from."""

    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def take(self, start: int, stop: int) -> Stats:
        """Statistics of images start..stop (views, no copy)."""
        return Stats(self.shape, {key: value[start:stop] for key, value in self.tensors.items()})

    @staticmethod
    def concat(parts: list[Stats]) -> Stats:
        """Join statistics computed block by block."""
        keys = parts[0].tensors.keys()
        return Stats(parts[0].shape, {key: torch.cat([part[key] for part in parts]) for key in keys})


def as_images(images: np.ndarray | torch.Tensor, name: str = "images", min_size: int = 1) -> torch.Tensor:
    """Check a (B, 1, H, W) or (B, H, W) batch in [0, 1] (float, finite, big enough); return (B, H, W) float32."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"{name}: expected shape (B, 1, H, W) or (B, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected floating point values in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"{name}: images must be at least {min_size}×{min_size}, got {tuple(images.shape[-2:])}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
    return images.to(torch.float32).contiguous()


class Baseline:
    """A classical similarity: per-image `stats` plus a vectorised `pair` of query and gallery blocks."""

    name: ClassVar[str]
    direction: ClassVar[Direction]
    identity: ClassVar[float]  # the score of an image compared with itself
    min_size: ClassVar[int] = 1
    query_block: ClassVar[int] = 1
    gallery_block: ClassVar[int] = 32

    def stats(self, images: torch.Tensor) -> Stats:
        """Per-image statistics of a validated (B, H, W) float32 batch."""
        raise NotImplementedError

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Scores (Q, G) of a block of queries against a block of gallery images."""
        raise NotImplementedError

    def prepare_gallery(self, images: np.ndarray | torch.Tensor, name: str = "gallery") -> Stats:
        """Validate gallery images and compute their statistics once, block by block."""
        x = as_images(images, name, self.min_size)
        step = self.gallery_block
        with torch.inference_mode():
            return Stats.concat([self.stats(x[i : i + step]) for i in range(0, len(x), step)])

    def score(self, queries: np.ndarray | torch.Tensor | Stats, gallery: Stats) -> torch.Tensor:
        """Brute-force (Q, G) scores of queries (images or prepared stats) against a prepared gallery."""
        query = queries if isinstance(queries, Stats) else self.prepare_gallery(queries, "queries")
        if query.shape != gallery.shape:
            raise ValueError(f"{self.name}: query images are {query.shape}, gallery images {gallery.shape}")
        rows = []
        with torch.inference_mode():
            for i in range(0, len(query), self.query_block):
                block = query.take(i, i + self.query_block)
                cols = [self.pair(block, gallery.take(j, j + self.gallery_block)) for j in range(0, len(gallery), self.gallery_block)]
                rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def paired(self, first: np.ndarray | torch.Tensor | Stats, second: np.ndarray | torch.Tensor | Stats) -> torch.Tensor:
        """Scores (B,) of first[i] against second[i] (images or prepared stats), e.g. a slice and its distorted copy."""
        a = first if isinstance(first, Stats) else self.prepare_gallery(first, "first")
        b = second if isinstance(second, Stats) else self.prepare_gallery(second, "second")
        if len(a) != len(b) or a.shape != b.shape:
            raise ValueError(f"{self.name}: paired batches differ: {len(a)}×{a.shape} and {len(b)}×{b.shape}")
        with torch.inference_mode():
            return torch.stack([self.pair(a.take(i, i + 1), b.take(i, i + 1))[0, 0] for i in range(len(a))])

    def distance(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores as distances: 0 for identical images, growing as images differ, whatever the direction."""
        return self.identity - scores if self.direction == "higher" else scores - self.identity
