"""DisentangledSiamese: a shared ResNet encoder with anatomy, noise and α heads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from retrieval.checkpoint import fit_problem, read_weights
from retrieval.embeddings import LAYOUT_SIDE

# name → (torchvision constructor, feature size, torchvision weights enum name)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], int, str]] = {
    "resnet18": (models.resnet18, 512, "ResNet18_Weights"),
    "resnet34": (models.resnet34, 512, "ResNet34_Weights"),
    "resnet50": (models.resnet50, 2048, "ResNet50_Weights"),
}
INVARIANCES = ("none", "d4")  # inference-time pooling over the 8 flips and 90° rotations of the input
POOLINGS = {"avg": 1, "grid": 2}  # encoder map → head input: global average, or a 2×2 grid that keeps coarse layout
SILHOUETTE_GRID = 32  # the slice is averaged to this grid before the silhouette's ramp
SILHOUETTE_LEVEL = 0.2  # the silhouette is 1 from this share of the way between the darkest and the 1%-brightest value
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights, only if they are already in the torch hub cache (never downloads)."""
    weights = getattr(models, BACKBONES[backbone][2]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise FileNotFoundError(f"{cached}: ImageNet weights for {backbone} are not on disk (nothing is downloaded); pass a local weights path")
    return torch.load(cached, map_location="cpu", weights_only=True)


def _head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Two-layer projection head."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class DisentangledSiamese(nn.Module):
    """Siamese network separating patient anatomy (z_anat, L2-normalised) from distortion (z_noise, â ∈ [0, 1])."""

    def __init__(
        self,
        backbone: str = "resnet50",
        anatomy_dim: int = 128,
        noise_dim: int = 64,
        pretrained: str | Path | None = None,
        invariance: str = "none",
        pooling: str = "avg",
        layout: float = 0.0,
        layout_map: str = "intensity",
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        if invariance not in INVARIANCES:
            raise ValueError(f"unknown invariance {invariance!r}; choose one of {INVARIANCES}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
        if not 0.0 <= layout < 1.0:
            raise ValueError(f"layout weight must be in [0, 1), got {layout}")
        if layout_map not in LAYOUT_MAPS:
            raise ValueError(f"unknown layout map {layout_map!r}; choose one of {sorted(LAYOUT_MAPS)}")
        self.invariance, self.pooling, self.layout, self.layout_map = invariance, pooling, layout, layout_map
        constructor, features, _ = BACKBONES[backbone]
        features *= POOLINGS[pooling] ** 2
        self.backbone_name = backbone
        self.encoder = constructor(weights=None)
        if pretrained is not None:
            state = _imagenet_state(backbone) if str(pretrained) == "imagenet" else read_weights(pretrained)
            problem = fit_problem(self.encoder.state_dict(), state) if isinstance(state, dict) else "not a dict of tensors"
            if problem:
                raise ValueError(f"{pretrained}: not torchvision {backbone} weights ({problem})")
            self.encoder.load_state_dict(state)
        self.encoder.fc = nn.Identity()
        self.encoder.avgpool = nn.AdaptiveAvgPool2d(POOLINGS[pooling])  # torchvision flattens what it returns
        self.anatomy_head = _head(features, 512, anatomy_dim)
        self.noise_head = _head(features, 256, noise_dim)
        self.alpha_head = nn.Linear(noise_dim, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward_once(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed a (B, 3, H, W) batch in [0, 1]: (z_anat (B,128) unit norm, z_noise (B,64), â (B,) in [0, 1])."""
        features = self.encoder((x - self.mean) / self.std)
        z_anat = F.normalize(self.anatomy_head(features).float(), dim=1)
        z_noise = self.noise_head(features)
        a_hat = torch.sigmoid(self.alpha_head(z_noise).float()).squeeze(1)
        return z_anat, z_noise.float(), a_hat

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference embedding: forward_once, averaged over the 8 flips/90° rotations when invariance is 'd4', and
        with the slice's layout appended to z_anat when the layout weight w > 0.

        With 'd4' a flipped or rotated slice gets the same learned code as the original (the mean over the group
        orbit is the same set of views). The layout (a 16×16 picture of the slice, `layout`) keeps where things
        are, which the pooled code loses; the anatomy vector is then [√(1−w)·z_anat, √w·layout], unit norm, so its
        cosine is (1−w)·cos(z_anat) + w·cos(layout). Search compares a query's layout under all 8 flips/turns
        (`retrieval.embeddings.orientations`), which keeps the whole comparison orientation-free.
        """
        if self.invariance == "none":
            z_anat, z_noise, a_hat = self.forward_once(x)
        else:
            views = torch.cat([dihedral(x, k) for k in range(8)])
            z_anat, z_noise, a_hat = self.forward_once(views)
            n = x.shape[0]
            z_anat, z_noise, a_hat = F.normalize(z_anat.view(8, n, -1).mean(0), dim=1), z_noise.view(8, n, -1).mean(0), a_hat.view(8, n).mean(0)
        if self.layout:
            z_anat = torch.cat([math.sqrt(1.0 - self.layout) * z_anat, math.sqrt(self.layout) * layout(x, self.layout_map)], dim=1)
        return z_anat, z_noise, a_hat

    def forward(
        self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Run anchor, positive and negative through the shared weights (one batched pass)."""
        n = anchor.shape[0]
        outputs = self.forward_once(torch.cat([anchor, positive, negative]))
        split = [tuple(t[i * n : (i + 1) * n] for t in outputs) for i in range(3)]
        return split[0], split[1], split[2]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state_dict or a whole checkpoint ({"state_dict", "config"}), rebuilding for its backbone."""
        if "state_dict" in state_dict and "config" in state_dict:
            config = state_dict["config"]
            self.invariance, self.layout = config.get("invariance", "none"), float(config.get("layout", 0.0))
            self.layout_map = config.get("layout_map", "intensity")
            if (config.get("backbone", self.backbone_name), config.get("pooling", "avg")) != (self.backbone_name, self.pooling):
                rebuilt = DisentangledSiamese(config["backbone"], config.get("anatomy_dim", 128), config.get("noise_dim", 64),
                                              pooling=config.get("pooling", "avg"))
                self.pooling = rebuilt.pooling
                self.backbone_name = rebuilt.backbone_name
                self.encoder, self.anatomy_head = rebuilt.encoder, rebuilt.anatomy_head
                self.noise_head, self.alpha_head = rebuilt.noise_head, rebuilt.alpha_head
            state_dict = state_dict["state_dict"]
        own = self.state_dict()
        cast = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state_dict.items()}
        return super().load_state_dict(cast, strict=strict, assign=assign)


def anatomical_distance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Row-wise anatomical distance 0.5 · (1 − cos(z1, z2)) ∈ [0, 1]."""
    return 0.5 * (1.0 - F.cosine_similarity(z1, z2, dim=-1))


def thumbnails(x: torch.Tensor, side: int = LAYOUT_SIDE) -> torch.Tensor:
    """(N, side, side) mean-centred thumbnails of channel 1 of network inputs (CT: the wide −600/1500 HU window, which
    shows lung and soft tissue — on the held-out CT folds it beat the soft-tissue window; MR: its one channel)."""
    return _centred_pool(x[:, 1].float(), side)


def _centred_pool(maps: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side, side) averages of (N, H, W) maps, less their mean (so the cosine compares where, not how much)."""
    pooled = F.adaptive_avg_pool2d(maps[:, None], side)[:, 0]
    return pooled - pooled.mean(dim=(1, 2), keepdim=True)


def silhouettes(x: torch.Tensor, side: int = LAYOUT_SIDE, level: float = SILHOUETTE_LEVEL) -> torch.Tensor:
    """(N, side, side) mean-centred soft foreground maps of channel 1: each cell rises from 0 at the slice's darkest
    value to 1 at `level` of the way to its 1%-brightest, on a SILHOUETTE_GRID² average so that noise barely
    moves it. Where a slice has signal and where not (body outline; on CT much of it the scanner's field of view)
    changes less between a patient's sequences than their intensities do (docs/training.md)."""
    grid = F.adaptive_avg_pool2d(x[:, 1:2].float(), SILHOUETTE_GRID)[:, 0]
    flat = grid.flatten(1)
    low, high = flat.amin(1), torch.topk(flat, max(1, flat.shape[1] // 100), dim=1).values[:, -1]
    span = (level * (high - low)).clamp_min(1e-6)
    return _centred_pool(((grid - low[:, None, None]) / span[:, None, None]).clamp(0.0, 1.0), side)


LAYOUT_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"intensity": thumbnails, "silhouette": silhouettes}


def layout(x: torch.Tensor, kind: str = "intensity") -> torch.Tensor:
    """(N, LAYOUT_SIDE²) unit-norm maps of what a slice looks like at 16×16, in the orientation it was read: its
    intensity thumbnail or its silhouette (`LAYOUT_MAPS`).

    On body parts the network never trained on these find a patient's other slices far better than the learned
    code does (docs/training.md); pooling, the silhouette's ramp and flipping commute, so a flipped slice has the flipped layout.
    """
    return F.normalize(LAYOUT_MAPS[kind](x).flatten(1), dim=1)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0–7) element of the dihedral group D4 applied to the last two axes: k % 4 quarter turns, then a flip if k ≥ 4."""
    turned = torch.rot90(x, k % 4, dims=(-2, -1))
    return turned.flip(-1) if k >= 4 else turned
