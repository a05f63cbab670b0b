"""DistortionAwareMetric: the user API over a trained checkpoint (embed, α, distances).

distance(a, b) = d_anat(a, b) + BETA · |â(a) − â(b)|, with d_anat = 0.5 · (1 − cos(z_a, z_b)).
d_anat tells who (it stays near 0 for benign distortion α ≤ TAU); the second term tells how
differently the two images were acquired, so the sum also tracks distortion severity. With a layout
in the anatomy vector, cos is the best over a's flips/turns (`retrieval.embeddings.aligned_cosine`).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from retrieval import BETA
from retrieval.alpha import AlphaEstimator
from retrieval.checkpoint import DEFAULT_CHECKPOINT, file_sha256, load_checkpoint
from retrieval.embeddings import LAYOUT_COLUMNS, Embeddings, aligned_cosine
from retrieval.inputs import ImageLike, check_spacing, network_inputs, normalise_modality
from retrieval.model import DisentangledSiamese
from retrieval.preprocess import DEFAULT_SIZE, intensity, resize_square


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cpu' / 'cuda' as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available")
    return torch.device(device)


@functools.cache
def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 pays on `device`: on CUDA and on CPUs with bf16 units (AVX-512-BF16, AMX) it is 3–4× faster than
    fp32; on other CPUs oneDNN emulates it and runs slower than fp32 (docs/benchmarks.md). Probed once per device."""
    if device.type != "cpu":
        return True
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where it is faster (`bf16_is_fast`), fp32 elsewhere."""
    if not bf16_is_fast(device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def embed_model(model: DisentangledSiamese, batch: torch.Tensor, device: torch.device, batch_size: int = 64,
                estimator: AlphaEstimator | None = None, factors: np.ndarray | None = None) -> Embeddings:
    """Embed a preprocessed (B, 3, S, S) tensor in chunks (bf16 autocast where it is faster, channels_last, the model's invariance pooling); eval mode.
    With an `estimator` (`retrieval.alpha`) it reports â from the inputs and their resize `factors` (None: unknown),
    else the network's α head does."""
    parts = []
    for start in range(0, len(batch), batch_size):
        chunk = batch[start : start + batch_size]
        x = chunk.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            z_anat, z_noise, a_hat = model.embed(x)
        alpha = a_hat.float().cpu().numpy() if estimator is None else estimator.estimate(
            chunk.cpu().numpy(), None if factors is None else factors[start : start + batch_size])
        parts.append(Embeddings(z_anat.float().cpu().numpy(), z_noise.float().cpu().numpy(), alpha, LAYOUT_COLUMNS if model.layout else 0))
    return Embeddings.concat(parts)


class DistortionAwareMetric:
    """Embeds raw slices, tensors or files and compares them by anatomy and distortion."""

    def __init__(self, model: DisentangledSiamese, config: dict[str, Any], checkpoint_hash: str = "", device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.config = config
        self.checkpoint_hash = checkpoint_hash
        self.estimator = AlphaEstimator.from_config(config)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto") -> "DistortionAwareMetric":
        """Load a checkpoint file (None: the shipped checkpoint)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        model, config = load_checkpoint(path)
        return cls(model, config, file_sha256(path), device)

    @property
    def size(self) -> int:
        """Side of the square network input this checkpoint was trained on."""
        return int(self.config.get("size", DEFAULT_SIZE))

    def preprocess(self, pixels: np.ndarray | torch.Tensor, modality: str, spacing: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """One raw 2D slice in modality units → 3×S×S network input."""
        return intensity(resize_square(pixels, self.size, spacing), modality)

    def embed_tensor(self, batch: torch.Tensor, batch_size: int = 64, factors: np.ndarray | None = None) -> Embeddings:
        """Embed an already preprocessed (B, 3, S, S) tensor, `batch_size` images at a time; `factors`: the resize
        factors it was made with (`retrieval.preprocess.resize_factor`; None: unknown), which the α estimator reads."""
        return embed_model(self.model, batch, self.device, batch_size, self.estimator, factors)

    def embed(self, images: ImageLike | Sequence[ImageLike], modality: str | None = None, batch_size: int = 32,
              factors: Sequence[float] | None = None, spacing: Any = None) -> Embeddings:
        """Embed images in batches: 2D arrays in modality units (HU for CT) as a reader returns them, preprocessed
        tensors, paths, pydicom Datasets and nibabel images (every slice, rescaled, with the header's spacing), or the
        readers' `Slice`s. `spacing` is the pixel size of the raw arrays: a number or a (row, column) pair in mm for all
        of them (default square pixels), or a list with one per raw array; `factors`, one per image, replace the resize
        factors the α estimator reads (raw slices and files have their own)."""
        modality, spacing = normalise_modality(modality), check_spacing(spacing)
        given = None if factors is None else [float(f) for f in factors]
        parts: list[Embeddings] = []
        batch: list[tuple[torch.Tensor, float]] = []

        def flush() -> None:
            parts.append(self.embed_tensor(torch.stack([tensor for tensor, _ in batch]), batch_size, np.array([factor for _, factor in batch])))
            batch.clear()

        for count, (tensor, factor) in enumerate(network_inputs(images, modality, spacing, self.size)):
            if given is not None and count >= len(given):
                raise ValueError(f"more images than the {len(given)} resize factors given")
            batch.append((tensor, factor if given is None else given[count]))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        if not parts:
            raise ValueError("no images to embed")
        if given is not None and sum(len(part.alpha) for part in parts) != len(given):
            raise ValueError(f"{len(given)} resize factors for {sum(len(part.alpha) for part in parts)} images")
        return Embeddings.concat(parts)

    def alpha(self, images: ImageLike | Sequence[ImageLike], modality: str | None = None, spacing: Any = None) -> np.ndarray:
        """Predicted distortion severity â ∈ [0, 1] per image (what `embed` takes)."""
        return self.embed(images, modality, spacing=spacing).alpha

    def _embeddings(self, x: Embeddings | ImageLike | Sequence[ImageLike], modality: str | None, spacing: Any) -> Embeddings:
        """Pass Embeddings through; embed anything else."""
        return x if isinstance(x, Embeddings) else self.embed(x, modality, spacing=spacing)

    def anatomy_distance(self, a: Any, b: Any, modality: str | None = None, spacing: Any = None) -> np.ndarray:
        """Row-aligned (or one-to-many) anatomical distance 0.5 · (1 − cos) between images or Embeddings."""
        ea, eb = self._embeddings(a, modality, spacing), self._embeddings(b, modality, spacing)
        return np.clip(0.5 * (1.0 - aligned_cosine(ea.anatomy, eb.anatomy, ea.layout)), 0.0, 1.0)

    def distance(self, a: Any, b: Any, modality: str | None = None, spacing: Any = None) -> np.ndarray:
        """Distortion-aware distance d_anat + BETA · |â_a − â_b| (see the module docstring)."""
        ea, eb = self._embeddings(a, modality, spacing), self._embeddings(b, modality, spacing)
        return self.anatomy_distance(ea, eb) + BETA * np.abs(ea.alpha - eb.alpha)
