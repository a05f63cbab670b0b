"""DINO: cosine similarity of a self-supervised ViT's class-token features (Caron et al. 2021); higher is closer.

Pretrained weights cannot be downloaded here, so they come from a path the user gives or from the
torch hub cache (where `torch.hub.load("facebookresearch/dino:main", ...)` leaves them). Without
weights the baseline raises BaselineUnavailable("no weights"): it never scores with untrained weights.
DINO's (timm-style) and torchvision's ViT key layouts are both accepted; the architecture is read
from the weights (heads = width / 64, as in every DINO ViT).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.baselines.base import Baseline, BaselineUnavailable, Stats
from retrieval.checkpoint import fit_problem, read_weights

HUB_FILES = (
    "dino_deitsmall16_pretrain.pth",
    "dino_deitsmall8_pretrain.pth",
    "dino_vitbase16_pretrain.pth",
    "dino_vitbase8_pretrain.pth",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_WIDTH = 64
LAYER = r"encoder.layers.encoder_layer_\1"
RENAMES = (  # DINO / timm ViT keys → torchvision VisionTransformer keys
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^blocks\.(\d+)\.norm1\.", LAYER + ".ln_1."),
    (r"^blocks\.(\d+)\.norm2\.", LAYER + ".ln_2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", LAYER + ".self_attention.in_proj_"),
    (r"^blocks\.(\d+)\.attn\.proj\.", LAYER + ".self_attention.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", LAYER + ".mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", LAYER + ".mlp.3."),
    (r"^norm\.", "encoder.ln."),
)


def find_weights(weights: str | Path | None = None) -> Path:
    """The user's weights file, else the first DINO checkpoint in the torch hub cache; BaselineUnavailable if none."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DINO weights file not found")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in HUB_FILES:
        if (cache / name).is_file():
            return cache / name
    raise BaselineUnavailable("dino", "no weights")


def torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT state dict in torchvision's layout, from DINO's teacher/backbone checkpoints or timm-style keys."""
    if "teacher" in state:
        state = state["teacher"]
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^(module\.)?(backbone\.)?", "", key)
        if key.startswith(("head.", "heads.")):
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def load_vit(path: Path) -> torch.nn.Module:
    """A torchvision VisionTransformer (class-token output, no head) with the architecture and weights in `path`."""
    from torchvision.models import VisionTransformer

    loaded = read_weights(path)  # one-line ValueError for a file torch cannot load safely
    try:
        state = torchvision_keys(loaded)
        width, _, patch, _ = state["conv_proj.weight"].shape
        tokens = state["encoder.pos_embedding"].shape[1] - 1
        layers = sum(1 for key in state if key.endswith(".ln_1.weight"))
        mlp = state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
    except Exception as exc:  # not a ViT: say which key or shape is missing
        raise ValueError(f"{path}: not a DINO ViT checkpoint ({type(exc).__name__}: {exc})") from exc
    side = math.isqrt(tokens)
    model = VisionTransformer(side * patch, patch, layers, max(1, width // HEAD_WIDTH), width, mlp)
    model.heads = torch.nn.Identity()
    problem = fit_problem(model.state_dict(), state)
    if problem:
        raise ValueError(f"{path}: weights do not fit a ViT ({problem})")
    model.load_state_dict(state, strict=True)
    return model.eval()


class DINO(Baseline):
    """Cosine similarity of L2-normalised DINO class tokens of the slice, resized to the ViT's input size."""

    name = "dino"
    direction = "higher"
    identity = 1.0
    query_block = 256

    def __init__(self, weights: str | Path | None = None) -> None:
        self.weights = find_weights(weights)
        self.model = load_vit(self.weights)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Class-token features of (B, H, W) images in [0, 1], grey repeated to RGB and ImageNet-normalised."""
        size = self.model.image_size
        x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return self.model((x.expand(-1, 3, -1, -1) - mean) / std)

    def stats(self, images: torch.Tensor) -> Stats:
        """Unit-norm class-token features."""
        return Stats(tuple(images.shape[-2:]), {"f": F.normalize(self.features(images), dim=1)})

    def pair(self, query: Stats, gallery: Stats) -> torch.Tensor:
        """Cosine similarity."""
        return query["f"] @ gallery["f"].T
