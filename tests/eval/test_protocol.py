"""The protocol: query split, gallery thinning, α grid, seeds, distorted queries, archive galleries and query variants."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from eval.protocol import MIXED, VARIANTS, build_workload, check_alphas, query_variant, split_queries, thin_gallery
from retrieval.distortions import distort
from retrieval.preprocess import network_input


def counts(patients: np.ndarray, rows: np.ndarray) -> dict[str, int]:
    """Rows per patient."""
    names, n = np.unique(patients[rows], return_counts=True)
    return dict(zip(names.tolist(), n.tolist()))


def test_split_takes_at_most_half_of_each_patient_and_leaves_single_slices_in_the_gallery() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 5 + ["c"] * 2 + ["d"])
    queries = split_queries(patients, seed=0, per_patient=8)
    assert counts(patients, queries) == {"a": 8, "b": 2, "c": 1}
    assert np.array_equal(queries, split_queries(patients, seed=0, per_patient=8))
    assert not np.array_equal(queries, split_queries(patients, seed=1, per_patient=8))


def test_max_queries_goes_round_robin_over_patients() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 6 + ["c"] * 2 + ["e"] * 10)
    assert counts(patients, split_queries(patients, seed=0, max_queries=4)) == {"a": 1, "b": 1, "c": 1, "e": 1}
    six = counts(patients, split_queries(patients, seed=0, max_queries=6))
    assert sum(six.values()) == 6 and set(six) == {"a", "b", "c", "e"} and max(six.values()) == 2


def test_thinned_gallery_keeps_every_patient() -> None:
    patients = np.array(["a"] * 20 + ["b"] * 3 + ["c"])
    kept = thin_gallery(np.arange(len(patients)), patients, per_patient=4, seed=0)
    assert counts(patients, kept) == {"a": 4, "b": 3, "c": 1}


def test_alpha_grid_must_include_zero_and_stay_in_range() -> None:
    assert check_alphas([0.5, 0.0, 0.5, 1.0]) == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="must include 0"):
        check_alphas([0.2, 0.8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_alphas([0.0, 1.5])


def test_every_query_is_distorted_with_its_own_seed_the_same_way_each_time(make_phantoms: Callable) -> None:
    data = make_phantoms(["p1"] * 4 + ["p2"] * 3 + ["p3"], "CT")
    workload = build_workload(data, (0.0, 0.5, 1.0), seed=3)
    again = build_workload(data, (0.0, 0.5, 1.0), seed=3)
    assert torch.equal(workload.distorted, again.distorted)
    assert workload.query.sources.tolist() == data.sources[split_queries(data.patients, seed=3)].tolist()
    assert len(workload.query) == 3 and len(workload.gallery) == 5  # every other slice is gallery
    clean = workload.distorted[0]
    assert torch.equal(clean, torch.from_numpy(data.images[np.isin(data.sources, workload.query.sources)]))
    for step, alpha in ((1, 0.5), (2, 1.0)):
        expected = distort(clean[1].numpy(), alpha, "CT", int(workload.seeds[1]))
        np.testing.assert_allclose(workload.distorted[step, 1].numpy(), expected, atol=1e-3)
        assert not torch.equal(workload.distorted[step], clean)
    assert workload.relevant.sum(1).tolist() == [int(np.sum(workload.gallery.patients == p)) for p in workload.query.patients]


def test_archive_gallery_distorts_every_slice_with_its_own_seed_and_level_zero_is_the_clean_gallery(make_phantoms: Callable) -> None:
    data = make_phantoms(["p1"] * 4 + ["p2"] * 4 + ["p3"] * 2, "MR")
    workload = build_workload(data, (0.0, 0.8), seed=1)
    clean = network_input(torch.from_numpy(workload.gallery.images), workload.gallery.modalities)
    assert workload.levels == (0.0, 0.8, MIXED)
    assert torch.equal(workload.gallery_inputs(0.0), clean)
    assert len(set(workload.gallery_seeds.tolist())) == len(workload.gallery)  # one seed per gallery slice
    assert not np.isin(workload.gallery_seeds, workload.seeds).any()  # a different stream from the queries'
    distorted = workload.gallery_inputs(0.8)
    assert torch.equal(distorted, build_workload(data, (0.0, 0.8), seed=1).gallery_inputs(0.8))
    for i in (0, len(workload.gallery) - 1):
        own = distort(workload.gallery.images[i], 0.8, "MR", int(workload.gallery_seeds[i]))
        np.testing.assert_allclose(distorted[i].numpy(), network_input(torch.from_numpy(own)[None], np.array(["MR"]))[0].numpy(), atol=1e-4)
    mixed = workload.gallery_alphas(MIXED)
    assert mixed.min() >= 0.0 and mixed.max() <= 1.0 and len(np.unique(mixed)) == len(mixed)
    strength = (workload.gallery_inputs(MIXED) - clean).abs().flatten(1).mean(1).numpy()
    assert np.corrcoef(mixed, strength)[0, 1] > 0.5  # more distorted where the slice's own α is higher


def test_query_variants_flip_turn_and_halve_the_working_grid(make_phantoms: Callable) -> None:
    images = torch.from_numpy(make_phantoms(["a", "b"], "CT", size=32).images)
    np.testing.assert_array_equal(query_variant(images, "flip").numpy(), images.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(query_variant(images, "rot90").numpy(), np.rot90(images.numpy(), 1, axes=(1, 2)))
    half = query_variant(images, "half")

    def detail(x: torch.Tensor) -> float:
        """Energy of neighbouring-pixel differences: what a coarser acquisition loses."""
        return float(((x[:, :, 1:] - x[:, :, :-1]) ** 2).mean() + ((x[:, 1:] - x[:, :-1]) ** 2).mean())

    assert half.shape == images.shape and detail(half) < 0.6 * detail(images)  # the finest detail of the grid is gone
    assert float((half - images).abs().mean()) < 0.12 * float(images.max() - images.min())  # the same anatomy
    assert set(VARIANTS) == {"flip", "rot90", "half"}
    with pytest.raises(ValueError, match="unknown query variant"):
        query_variant(images, "blur")


def test_workload_refuses_an_archive_without_queries_or_second_patient(make_phantoms: Callable) -> None:
    with pytest.raises(ValueError, match="nothing to query"):
        build_workload(make_phantoms(["a", "b", "c"], "MR"), (0.0, 1.0), seed=0)
    with pytest.raises(ValueError, match="two patients"):
        build_workload(make_phantoms(["a"] * 4, "MR"), (0.0, 1.0), seed=0)
