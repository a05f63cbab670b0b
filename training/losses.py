"""The five loss terms of the disentangled metric, each a small function, plus their weighted sum.

Default weights (LossWeights): infonce 1, distortion 5, ordering 1, alpha 5, orthogonality 0.1, and an optional
sixth term, structure (relational distillation of a low-resolution structural similarity, off at 0).
The distortion regression pulls the clean↔distorted anatomical distance towards D_MAX · shape_a(α):
0 for benign α ≤ TAU, then rising as expm1(K(α − TAU)) / expm1(K(1 − TAU)) to D_MAX at α = 1.
D_MAX = 0.1 keeps even the worst distortion well inside the typical distance between patients.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from retrieval import TAU
from retrieval.model import anatomical_distance

K = 4.0  # curvature of shape_a above TAU
D_MAX = 0.1  # target anatomical distance between a slice and its α = 1 distortion
TEMPERATURE = 0.1
ORDER_MARGIN = 0.005


@dataclass(frozen=True)
class LossWeights:
    """Weights of the five terms in the total loss."""

    infonce: float = 1.0
    distortion: float = 5.0
    ordering: float = 1.0
    alpha: float = 5.0
    orthogonality: float = 0.1
    structure: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Plain dict for checkpoint configs and CSV logs."""
        return asdict(self)


def shape_a(alpha: torch.Tensor, tau: float = TAU, k: float = K) -> torch.Tensor:
    """Target shape of distortion movement: 0 for α ≤ tau, expm1(k(α − tau)) / expm1(k(1 − tau)) above."""
    rising = torch.expm1(k * (alpha - tau)) / math.expm1(k * (1.0 - tau))
    return torch.where(alpha > tau, rising, torch.zeros_like(alpha))


def info_nce(z: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE, prior: torch.Tensor | None = None,
             prior_weight: float = 0.0) -> torch.Tensor:
    """Multi-positive InfoNCE: every embedding is pulled to all others of its patient, pushed from the rest.

    For anchor i with positives P(i): −mean_{p∈P(i)} log(exp(s_ij/t) / Σ_{j≠i} exp(s_ij/t)), averaged over anchors
    that have a positive. z is (N, D) and L2-normalised; labels are (N,) patient indices. With a fixed `prior`
    similarity (N, N) of weight w, s = (1 − w)·z zᵀ + w·prior: the code learns what the prior does not already tell.
    """
    n = z.shape[0]
    similarity = z @ z.T if prior is None else (1.0 - prior_weight) * (z @ z.T) + prior_weight * prior
    logits = similarity / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)[has_positive]) / counts[has_positive]
    return per_anchor.mean()


class PatientMemory:
    """Cross-batch memory (XBM, Wang et al. 2020): the last `size` anatomy codes and their labels stay as extra
    positives and negatives of the multi-positive InfoNCE (pytorch-metric-learning's CrossBatchMemory around its
    SupConLoss, which is `info_nce` without a prior), so a step sees many more patients than it draws."""

    def __init__(self, size: int, temperature: float, dim: int = 128) -> None:
        from pytorch_metric_learning.losses import CrossBatchMemory, SupConLoss

        self.loss = CrossBatchMemory(SupConLoss(temperature=temperature), dim, memory_size=size)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE of the batch (z, global integer labels) against itself and the memory, which the batch then joins."""
        return self.loss(z, labels)

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue with the same memory."""
        return {"embeddings": self.loss.embedding_memory.cpu(), "labels": self.loss.label_memory.cpu(),
                "position": self.loss.queue_idx, "filled": self.loss.has_been_filled}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state()` of an earlier run."""
        self.loss.embedding_memory, self.loss.label_memory = state["embeddings"], state["labels"]
        self.loss.queue_idx, self.loss.has_been_filled = int(state["position"]), bool(state["filled"])


def distortion_regression(z_clean: torch.Tensor, z_distorted: torch.Tensor, alpha: torch.Tensor, d_max: float = D_MAX, k: float = K) -> torch.Tensor:
    """MSE between d_anat(clean, distorted) and d_max · shape_a(α)."""
    return F.mse_loss(anatomical_distance(z_clean, z_distorted), d_max * shape_a(alpha, k=k))


def ordering(d_low: torch.Tensor, d_high: torch.Tensor, alpha_low: torch.Tensor, alpha_high: torch.Tensor, margin: float = ORDER_MARGIN) -> torch.Tensor:
    """Hinge making the distance at the higher α exceed the lower by `margin`, where the higher α is malignant."""
    swap = alpha_low > alpha_high
    lo, hi = torch.where(swap, d_high, d_low), torch.where(swap, d_low, d_high)
    a_hi = torch.maximum(alpha_low, alpha_high)
    active = (a_hi > TAU) & ((alpha_high - alpha_low).abs() > 0.05)
    hinge = F.relu(margin + lo - hi)
    return (hinge * active).sum() / active.sum().clamp_min(1)


def alpha_regression(a_hat: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and true distortion severity."""
    return F.mse_loss(a_hat, alpha)


def orthogonality(z_anat: torch.Tensor, z_noise: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of the batch cross-correlation of the two codes, in [0, 1] (0 when orthogonal).

    As the difference loss of Domain Separation Networks: ||Ẑ_anatᵀ Ẑ_noise||²_F / N² with row-normalised codes.
    """
    a = F.normalize(z_anat, dim=1)
    b = F.normalize(z_noise, dim=1)
    return (a.T @ b).pow(2).sum() / z_anat.shape[0] ** 2


def structure_similarity(x: torch.Tensor, kind: str = "intensity") -> torch.Tensor:
    """Teacher similarity (N, N) of network inputs: cosine of their layouts (`kind`, retrieval.model.LAYOUT_MAPS),
    maximised over the 8 flips and 90° turns of the second image (so it is as orientation-free as the embedding)."""
    from retrieval.embeddings import LAYOUT_SIDE
    from retrieval.model import dihedral, layout

    flat = layout(x, kind)  # unit norm: flipping or turning keeps it so
    turned = torch.stack([dihedral(flat.view(-1, LAYOUT_SIDE, LAYOUT_SIDE), k).flatten(1) for k in range(8)])  # (8, N, D)
    return torch.einsum("nd,kmd->knm", flat, turned).amax(dim=0)


def structure_distillation(z: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL from the teacher's neighbour distribution to the embedding's, over pairs of different patients.

    Each row's teacher similarities are standardised (mean 0, unit spread) and softmaxed; the embedding's
    cosine similarities over the same pairs are softmaxed at `temperature`. Same-patient pairs are left to
    InfoNCE. The term keeps the embedding ordering other patients by image structure, which is what carries
    over to anatomy and datasets the patient-contrastive term never saw.
    """
    other = labels[:, None] != labels[None, :]
    rows = other.sum(1) > 1
    if not rows.any():
        return z.sum() * 0.0
    t = teacher.masked_fill(~other, float("nan"))
    mean = torch.nanmean(t, dim=1, keepdim=True)
    spread = torch.sqrt(torch.nanmean((t - mean) ** 2, dim=1, keepdim=True)).clamp_min(1e-6)
    target = F.softmax(((teacher - mean) / spread).masked_fill(~other, float("-inf")), dim=1)
    log_student = F.log_softmax(((z @ z.T) / temperature).masked_fill(~other, float("-inf")), dim=1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - log_student)).masked_fill(~other, 0.0).sum(1)
    return kl[rows].mean()
