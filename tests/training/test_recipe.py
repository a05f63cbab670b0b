"""The training recipe's parts on data the tests make: seeded augmentation, views, sampler, folds and the patient split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.model import DisentangledSiamese, dihedral
from retrieval.preprocess import network_input
from retrieval.slices import SliceSet
from training.augment import AugmentConfig, AugmentParams, geometric, sample_params
from training.data import split_patients
from training.folds import plan_folds, split_by_datasets
from training.loop import views
from training.sampler import TripletSampler


def _slices(patients: list[str], datasets: list[str], modality: str = "CT", size: int = 32, seed: int = 0) -> SliceSet:
    """Distinct random slices (HU-like for CT) with the given patient and dataset per slice."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 300.0, size=(len(patients), size, size)).astype(np.float32)
    return SliceSet(images, np.array(patients), np.full(len(patients), modality), np.array([f"s{i}" for i in range(len(patients))]),
                    np.array(datasets))


@pytest.fixture
def mixed() -> SliceSet:
    """Two datasets: 'big' with 6 patients × 3 slices, 'small' with 2 patients × 2 slices."""
    patients = [f"b{p}" for p in range(6) for _ in range(3)] + [f"s{p}" for p in range(2) for _ in range(2)]
    return _slices(patients, ["big"] * 18 + ["small"] * 4)


def test_geometric_d4_equals_the_models_dihedral_pooling_group() -> None:
    x = torch.rand(1, 16, 16) * 100
    for k in range(8):
        params = AugmentParams.identity(1)
        params = AugmentParams(np.array([k]), *(getattr(params, f) for f in
                               ("angle", "zoom_x", "zoom_y", "shift_x", "shift_y", "gain", "offset", "gamma", "contrast")))
        assert torch.allclose(geometric(x, params), dihedral(x, k), atol=1e-3)


def test_identity_params_change_nothing_and_fill_is_the_slice_minimum() -> None:
    x = torch.rand(2, 16, 16) * 100 - 1000
    assert torch.equal(geometric(x, AugmentParams.identity(2)), x)
    shifted = AugmentParams.identity(2)
    shifted = AugmentParams(*(np.full(2, 0.9) if f == "shift_x" else getattr(shifted, f) for f in
                              ("d4", "angle", "zoom_x", "zoom_y", "shift_x", "shift_y", "gain", "offset", "gamma", "contrast")))
    out = geometric(x, shifted)
    assert torch.allclose(out[:, :, -2:], x.amin(dim=(1, 2), keepdim=True).expand(2, 16, 2), atol=1e-3)


def test_sampler_batches_are_pure_functions_of_seed_and_step(mixed: SliceSet) -> None:
    make = lambda: TripletSampler(mixed.patients, 4, seed=7, datasets=mixed.datasets, balance=0.5, augment=AugmentConfig(), instance=0.5)
    a, b = make(), make()
    for step in (0, 5, 3):  # any order: no hidden state between steps
        va, vb = views(mixed, a.batch(step)), views(mixed, b.batch(step))
        assert torch.equal(va[0], vb[0]) and np.array_equal(va[1], vb[1]) and np.array_equal(va[2], vb[2])
    assert not torch.equal(views(mixed, a.batch(0))[0], views(mixed, a.batch(1))[0])


def test_views_label_patients_or_slices_and_the_two_never_meet(mixed: SliceSet) -> None:
    """Patient stage: one label per patient (anchor and positive share it); label-free stage: one per slice, above
    every patient label, so a cross-batch memory never takes a slice label for a patient."""
    batch = TripletSampler(mixed.patients, 4, seed=3, instance=1.0).batch(0)
    _, by_patient, _ = views(mixed, batch)
    _, by_slice, _ = views(mixed, batch, by_slice=True)
    n, patients = len(batch.anchor), np.unique(mixed.patients)
    assert np.array_equal(patients[by_patient[:n]], mixed.patients[batch.anchor])
    assert np.array_equal(by_patient[:n], by_patient[n : 2 * n]) and np.array_equal(by_slice[:n], by_slice[n : 2 * n])
    assert np.array_equal(patients[by_patient[4 * n :]], mixed.patients[batch.negative])
    assert np.array_equal(by_slice - len(mixed), np.concatenate([batch.anchor, *[batch.positive] * 3, batch.negative]))
    assert by_slice.min() >= len(patients) > by_patient.max()


def test_sampler_triplets_respect_patients(mixed: SliceSet) -> None:
    sampler = TripletSampler(mixed.patients, 5, seed=1, datasets=mixed.datasets, balance=1.0, augment=None)
    for step in range(20):
        batch = sampler.batch(step)
        assert len(set(mixed.patients[batch.anchor])) == 5  # distinct patients per step
        assert np.array_equal(mixed.patients[batch.anchor], mixed.patients[batch.positive])
        assert not np.any(mixed.patients[batch.negative] == mixed.patients[batch.anchor])
        assert np.all((batch.alpha_1 >= 0) & (batch.alpha_1 <= 1))


def test_balance_gives_each_dataset_the_same_share(mixed: SliceSet) -> None:
    def small_share(balance: float) -> float:
        sampler = TripletSampler(mixed.patients, 1, seed=0, datasets=mixed.datasets, balance=balance)
        drawn = [mixed.datasets[sampler.batch(step).anchor[0]] for step in range(2000)]
        return float(np.mean(np.array(drawn) == "small"))

    assert small_share(0.0) == pytest.approx(2 / 8, abs=0.04)  # uniform over patients
    assert small_share(1.0) == pytest.approx(0.5, abs=0.04)  # equal per dataset
    with pytest.raises(ValueError, match="balance"):
        TripletSampler(mixed.patients, 2, seed=0, balance=1.5)


def test_instance_share_makes_anchor_the_positive_slice(mixed: SliceSet) -> None:
    always = TripletSampler(mixed.patients, 4, seed=3, instance=1.0).batch(0)
    assert np.array_equal(always.anchor, always.positive)
    never = [TripletSampler(mixed.patients, 4, seed=3, instance=0.0).batch(s) for s in range(10)]
    assert any(not np.array_equal(b.anchor, b.positive) for b in never)


def test_neighbour_positives_lie_within_two_slices_of_the_anchor_in_its_series() -> None:
    """Two patients, each with two series of 6 slices (reader order = row order): neighbour positives stay in the
    anchor's series, at most two rows away; a slice of an unknown series keeps the ordinary draw."""
    patients = np.repeat(["p0", "p1"], 12)
    series = np.tile(np.repeat(["a", "b"], 6), 2)
    series[-1] = ""
    sampler = TripletSampler(patients, 2, seed=0, series=series, neighbour=1.0)
    pairs = [(a, b) for step in range(200) for a, b in zip(sampler.batch(step).anchor, sampler.batch(step).positive) if series[a]]
    assert pairs and all(series[a] == series[b] and patients[a] == patients[b] and 1 <= abs(int(a) - int(b)) <= 2 for a, b in pairs)
    off = TripletSampler(patients, 2, seed=0, series=series, neighbour=0.0)
    assert any(abs(int(a) - int(b)) > 2 for step in range(50) for a, b in zip(off.batch(step).anchor, off.batch(step).positive))
    assert np.array_equal(off.batch(3).positive, TripletSampler(patients, 2, seed=0).batch(3).positive)  # off: the old draws


def test_alpha_zero_views_equal_the_clean_slice(mixed: SliceSet) -> None:
    """With identity augmentation the clean views are the network input of the slice; a distorted view at α = 0 equals its clean view."""
    batch = TripletSampler(mixed.patients, 3, seed=2, augment=None).batch(0)
    zero = np.zeros(3)
    batch = type(batch)(**{**batch.__dict__, "alpha_1": zero})
    x, _, alphas = views(mixed, batch)
    expected = network_input(torch.from_numpy(mixed.images[batch.anchor]), mixed.modalities[batch.anchor])
    assert torch.equal(x[:3], expected)
    assert torch.equal(x[6:9], x[3:6])  # positive at α1 = 0 is the clean positive
    assert np.all(alphas[:6] == 0)
    augmented = TripletSampler(mixed.patients, 3, seed=2, augment=AugmentConfig()).batch(0)
    augmented = type(augmented)(**{**augmented.__dict__, "alpha_1": zero})
    y, _, _ = views(mixed, augmented)
    assert torch.equal(y[6:9], y[3:6])  # also under augmentation: the distorted views share the positive's transform
    assert not torch.equal(y[:3], x[:3])


def test_sample_params_switches_families_off() -> None:
    rng = lambda: np.random.default_rng(0)
    geometric_only = sample_params(rng(), 4, AugmentConfig(intensity=False))
    both = sample_params(rng(), 4, AugmentConfig())
    assert np.array_equal(geometric_only.d4, both.d4) and np.all(geometric_only.gain == 1) and np.any(both.gain != 1)
    assert np.all(sample_params(rng(), 4, AugmentConfig(geometric=False)).d4 == 0)


def test_plan_folds_pools_small_datasets_and_split_holds_whole_datasets_out() -> None:
    patients = ["a1", "a1", "a2", "b1", "b2", "c1", "d1"]
    data = _slices(patients, ["A", "A", "A", "B", "B", "C", "D"])
    folds = plan_folds(data)
    assert [(f.name, f.held_out) for f in folds] == [("A", ("A",)), ("B", ("B",)), ("C+D", ("C", "D"))]
    train, held = split_by_datasets(data, ("C", "D"))
    assert set(held.patients) == {"c1", "d1"} and not set(train.patients) & set(held.patients)
    with pytest.raises(ValueError, match="no slices of held-out"):
        split_by_datasets(data, ("E",))
    with pytest.raises(ValueError, match="no dataset"):
        plan_folds(_slices(["a", "b"], ["", "B"]))


def test_a_patient_in_two_datasets_never_trains_when_one_is_held_out() -> None:
    data = _slices(["p", "p", "q", "r"], ["A", "B", "B", "B"])
    train, held = split_by_datasets(data, ("A",))
    assert "p" not in set(train.patients) and set(held.patients) == {"p"}


def test_split_patients_is_seeded_disjoint_and_stratified() -> None:
    patients = [f"ct{i}" for i in range(10)] + [f"mr{i}" for i in range(20)]
    modalities = ["CT"] * 10 + ["MR"] * 20
    chosen = split_patients(patients, modalities, 0.2, seed=0)
    assert chosen == split_patients(patients, modalities, 0.2, seed=0)
    assert chosen != split_patients(patients, modalities, 0.2, seed=1)
    assert sum(p.startswith("ct") for p in chosen) == 2 and sum(p.startswith("mr") for p in chosen) == 4
    assert split_patients(patients, modalities, 0.0, seed=0) == set()
    with pytest.raises(ValueError):
        split_patients(patients, modalities, 1.0, seed=0)


def test_d4_invariance_gives_one_embedding_for_every_orientation() -> None:
    torch.manual_seed(0)
    model = DisentangledSiamese("resnet18", invariance="d4").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.embed(x)
        for k in range(1, 8):
            turned = model.embed(dihedral(x, k))
            assert torch.allclose(turned[0], reference[0], atol=1e-5) and torch.allclose(turned[2], reference[2], atol=1e-5)
        plain = DisentangledSiamese("resnet18", invariance="none").eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain.embed(x.flip(-1))[0], plain.embed(x)[0], atol=1e-3)
