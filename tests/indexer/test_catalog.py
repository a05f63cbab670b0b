"""Catalog: one transaction per batch, completion flags, deletes that never reuse ids, filters."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.catalog import Catalog, SeriesRecord, SliceRecord


def series(key: str, patient: str, modality: str = "CT") -> SeriesRecord:
    return SeriesRecord(key, patient, None, f"uid-{key}", modality, f"/archive/{key}", f"sum-{key}")


def slices(key: str, n: int, alpha: float = 0.1, seed: int = 0) -> list[SliceRecord]:
    rng = np.random.default_rng(seed)
    return [SliceRecord(key, i, f"/archive/{key}/{i}.dcm", f"file-{i}", alpha + 0.01 * i, rng.standard_normal(8).astype(np.float32)) for i in range(n)]


@pytest.fixture()
def catalog(tmp_path) -> Catalog:
    cat = Catalog(tmp_path / "catalog.sqlite")
    yield cat
    cat.close()


def test_batches_return_ids_in_order_and_complete_series(catalog) -> None:
    a, b = series("a", "P1"), series("b", "P2", "MR")
    first = catalog.commit_batch([a], slices("a", 3), [], "model", "0.1")
    assert catalog.series_states() == {"a": ("sum-a", False)}
    second = catalog.commit_batch([a, b], slices("a", 2)[:0] + slices("b", 4, seed=1), ["a", "b"], "model", "0.1")
    assert first.tolist() == sorted(first.tolist()) and second.min() > first.max()
    assert catalog.series_states() == {"a": ("sum-a", True), "b": ("sum-b", True)}
    assert catalog.ids().tolist() == first.tolist() + second.tolist()
    stored = catalog.vectors(second[::-1], 8)
    assert np.array_equal(stored, np.stack([s.vector for s in slices("b", 4, seed=1)])[::-1])
    assert catalog.counts("modality") == {"CT": 3, "MR": 4}
    rows = catalog.slices(first)
    assert {r.patient_id for r in rows.values()} == {"P1"} and rows[int(first[1])].slice_index == 1


def test_failed_batch_commits_nothing(catalog) -> None:
    catalog.commit_batch([series("a", "P1")], slices("a", 2), [], "model", "0.1")
    with pytest.raises(KeyError):  # a slice of a series that was never recorded
        catalog.commit_batch([], slices("a", 1) + slices("ghost", 1), [], "model", "0.1")
    assert len(catalog.ids()) == 2


def test_deleted_ids_are_never_reused(catalog) -> None:
    catalog.commit_batch([series("a", "P1")], slices("a", 3), ["a"], "model", "0.1")
    removed = catalog.delete_patient("P1")
    assert len(removed) == 3 and catalog.series_states() == {} and len(catalog.ids()) == 0
    again = catalog.commit_batch([series("a", "P1")], slices("a", 3), ["a"], "model", "0.1")
    assert again.min() > removed.max(), "AUTOINCREMENT: a FAISS id left over from a crash can never name a new row"
    assert catalog.delete_series(["a"]).tolist() == again.tolist()


def test_eligible_ids_filter_alpha_modality_patient(catalog) -> None:
    catalog.commit_batch([series("a", "P1"), series("b", "P2", "MR")], slices("a", 5, alpha=0.1) + slices("b", 5, alpha=0.3), ["a", "b"], "m", "0.1")
    rows = catalog.slices(catalog.ids())
    low = catalog.eligible_ids(max_alpha=0.2)
    assert low.tolist() and all(rows[i].alpha <= 0.2 for i in low) and len(low) == 5
    assert {rows[i].modality for i in catalog.eligible_ids(modality="MR")} == {"MR"}
    assert {rows[i].patient_id for i in catalog.eligible_ids(exclude_patients=["P1"])} == {"P2"}
    assert catalog.eligible_ids(max_alpha=0.0).tolist() == []
