"""Each loss term: known values on tiny inputs, gradients flow, and the documented special cases."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from retrieval import TAU
from retrieval.metric import BETA
from training import losses

README = Path(__file__).resolve().parents[2] / "README.md"


def test_shape_a_matches_formula_at_and_around_tau() -> None:
    alpha = torch.tensor([0.0, 0.2, TAU, TAU + 1e-4, 0.5, 1.0], dtype=torch.float64)
    k = 4.0
    expected = [0.0, 0.0, 0.0] + [math.expm1(k * (a - TAU)) / math.expm1(k * (1 - TAU)) for a in alpha[3:].tolist()]
    assert torch.allclose(losses.shape_a(alpha, TAU, k), torch.tensor(expected, dtype=torch.float64))
    assert losses.shape_a(torch.tensor([1.0]), TAU, k).item() == pytest.approx(1.0)
    values = losses.shape_a(torch.linspace(TAU, 1.0, 50), TAU, k)
    assert (values.diff() > 0).all()


def test_info_nce_known_value_two_pairs() -> None:
    z = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    # anchor 0: similarities to (1, 2, 3) = (1, 0, 0) → −log(e^{2} / (e^{2} + 2))
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
    assert losses.info_nce(z, labels, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_prefers_patient_clusters_and_has_gradients() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    good = F.normalize(torch.eye(3).repeat_interleave(2, dim=0) + 0.01, dim=1)
    mixed = good[[0, 2, 4, 1, 3, 5]]
    assert losses.info_nce(good, labels) < losses.info_nce(mixed, labels)
    z = torch.randn(6, 8, requires_grad=True)
    losses.info_nce(F.normalize(z, dim=1), labels).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_memory_is_info_nce_on_a_first_batch_then_counts_past_codes() -> None:
    """pytorch-metric-learning's SupConLoss inside CrossBatchMemory is this InfoNCE on a first batch; on the next
    batch the earlier codes join as positives (same label) and negatives (the known value below)."""
    torch.manual_seed(0)
    first, labels = F.normalize(torch.randn(6, 128), dim=1), torch.tensor([0, 0, 1, 1, 2, 2])
    memory, t = losses.PatientMemory(size=16, temperature=0.5), 0.5
    assert memory(first, labels).item() == pytest.approx(losses.info_nce(first, labels, t).item(), rel=1e-5)
    second, second_labels = F.normalize(torch.randn(2, 128), dim=1), torch.tensor([0, 3])
    keys, key_labels = torch.cat([first, second]), torch.cat([labels, second_labels])
    # anchor 0 of the second batch: its positives are rows 0 and 1 of the first; its denominator every other code
    logits = second[0] @ keys.T / t
    others = torch.ones(len(keys), dtype=torch.bool)
    others[6] = False
    log_prob = logits - torch.logsumexp(logits[others], dim=0)
    expected = -log_prob[(key_labels == 0) & others].mean()  # anchor 1 (label 3) has no positive and does not count
    assert memory(second, second_labels).item() == pytest.approx(expected.item(), rel=1e-5)
    restored = losses.PatientMemory(size=16, temperature=0.5)
    restored.restore(memory.state())
    assert restored(first, labels).item() == pytest.approx(memory(first, labels).item(), rel=1e-6)


def test_info_nce_with_a_prior_scores_the_fused_similarity() -> None:
    """s = (1 − w)·z zᵀ + w·prior: the known value with a prior, weight 0 is the plain loss, and a prior that already
    separates the patients leaves less for the code to do."""
    z = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    a, b = 0.2, 0.6  # prior similarity to the same patient's other view, and to each view of the other patient
    prior = torch.tensor([[1.0, a, b, b], [a, 1.0, b, b], [b, b, 1.0, a], [b, b, a, 1.0]])
    t, w = 0.5, 0.25
    positive, negative = (1 - w) * 1.0 + w * a, w * b  # every anchor: one positive, two negatives
    expected = -math.log(math.exp(positive / t) / (math.exp(positive / t) + 2 * math.exp(negative / t)))
    assert losses.info_nce(z, labels, t, prior, w).item() == pytest.approx(expected, rel=1e-6)
    assert losses.info_nce(z, labels, t, prior, 0.0).item() == pytest.approx(losses.info_nce(z, labels, t).item())
    random = F.normalize(torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    separating = (labels[:, None] == labels[None, :]).float() * 2 - 1
    assert losses.info_nce(random, labels, t, separating, 0.5) < losses.info_nce(random, labels, t)


def test_distortion_regression_zero_on_target_and_differentiable() -> None:
    clean = F.normalize(torch.randn(4, 16), dim=1)
    alpha = torch.tensor([0.1, 0.3, 0.7, 1.0])
    assert losses.distortion_regression(clean[:2], clean[:2], alpha[:2]).item() == pytest.approx(0.0, abs=1e-7)
    distorted = F.normalize(torch.randn(4, 16), dim=1).requires_grad_(True)
    loss = losses.distortion_regression(clean, distorted, alpha)
    loss.backward()
    assert loss.item() > 0 and distorted.grad.abs().sum() > 0


def test_ordering_hinge_values() -> None:
    d_low, d_high = torch.tensor([0.01, 0.05]), torch.tensor([0.05, 0.01])
    a_low, a_high = torch.tensor([0.4, 0.4]), torch.tensor([0.9, 0.9])
    # first pair already ordered by more than the margin; second violates by 0.04 + margin
    assert losses.ordering(d_low, d_high, a_low, a_high, margin=0.005).item() == pytest.approx((0.0 + 0.045) / 2)
    # swapping which argument holds the higher α gives the same loss
    assert losses.ordering(d_high, d_low, a_high, a_low, margin=0.005).item() == pytest.approx((0.0 + 0.045) / 2)
    # pairs where both levels are benign carry no ordering constraint
    assert losses.ordering(d_low, d_high, torch.tensor([0.0, 0.1]), torch.tensor([0.2, 0.3])).item() == 0.0


def test_alpha_regression_known_value() -> None:
    a_hat = torch.tensor([0.0, 0.5], requires_grad=True)
    loss = losses.alpha_regression(a_hat, torch.tensor([1.0, 0.5]))
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert a_hat.grad.abs().sum() > 0


def test_orthogonality_zero_for_orthogonal_codes_positive_otherwise() -> None:
    z_anat = torch.zeros(4, 6)
    z_anat[:2, 0] = 1.0
    z_noise = torch.zeros(4, 3)
    z_noise[2:, 1] = 1.0  # the batch columns of the two codes are orthogonal
    assert losses.orthogonality(z_anat, z_noise).item() == 0.0
    shared = torch.randn(4, 3, requires_grad=True)
    value = losses.orthogonality(torch.cat([shared, shared], dim=1), shared)
    value.backward()
    assert value.item() > 0 and shared.grad.abs().sum() > 0


def test_documented_constants_are_the_code_constants() -> None:
    """The README's loss table and constants are what the code uses (a changed constant must change the docs)."""
    text = README.read_text(encoding="utf-8")
    number = r"(\d+(?:\.\d+)?)"
    table = dict(re.findall(rf"^\| (InfoNCE|distortion|ordering|α|orthogonality|structure) \| .*? \| {number} \|$", text, flags=re.M))
    names = {"InfoNCE": "infonce", "distortion": "distortion", "ordering": "ordering", "α": "alpha", "orthogonality": "orthogonality", "structure": "structure"}
    assert {names[k]: float(v) for k, v in table.items()} == losses.LossWeights().as_dict()
    documented: dict[str, set[float]] = {}
    for name, value in re.findall(rf"(D_MAX|TAU|\bK|β) = {number}", text):
        documented.setdefault(name, set()).add(float(value))
    assert documented == {"D_MAX": {losses.D_MAX}, "TAU": {TAU}, "K": {losses.K}, "β": {BETA}}
    assert re.search(rf"temperature {losses.TEMPERATURE:g}\b", text)


def test_structure_teacher_is_orientation_free_and_distillation_prefers_its_order() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    turned = torch.cat([x[:3], torch.rot90(x[3:], 1, dims=(-2, -1)).flip(-1)])
    teacher = losses.structure_similarity(torch.cat([x, turned]))
    assert torch.allclose(teacher[:6, :6], teacher[6:, 6:], atol=1e-5)  # same similarities whatever the orientation
    labels = torch.arange(6)
    values, vectors = torch.linalg.eigh(teacher[:6, :6])
    student = F.normalize(vectors * values.clamp_min(0).sqrt(), dim=1)  # cosines that reproduce the teacher's
    aligned = losses.structure_distillation(student, teacher[:6, :6], labels)
    shuffled = losses.structure_distillation(student[torch.tensor([3, 5, 0, 4, 1, 2])], teacher[:6, :6], labels)
    assert aligned < shuffled
    z = torch.randn(6, 8, requires_grad=True)
    losses.structure_distillation(F.normalize(z, dim=1), teacher[:6, :6], labels).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
