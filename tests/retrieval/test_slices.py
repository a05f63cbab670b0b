"""Slices in memory: a cached read gives back what the first read gave, skipped files included."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file

from retrieval.io import Identity, Skipped
from retrieval.slices import FIELDS, cached_slices, load_slices


def test_a_cache_hit_returns_the_slices_and_skipped_files_of_the_first_read(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), archive / name)
    (archive / "truncated.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:2000])
    reads: list[list[Skipped]] = [[], []]
    first, again = (cached_slices([archive], Identity(), 64, tmp_path / "cache", reads[k].append) for k in range(2))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert [Path(s.path).name for s in reads[0]] == ["truncated.dcm"] and reads[1] == reads[0]
    assert first.images.shape == (2, 64, 64)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.factors[0] == 2.0  # CT_small is 128² (MR_small is 64², its factor 1)
    assert first.native.shape == first.images.shape and np.all(first.native_factors <= first.factors + 1e-6)
    bare = load_slices([archive], Identity(), 64, native_views=False)  # what a benchmark reads: no native views
    assert bare.native is None and bare.native_factors is None
    np.testing.assert_array_equal(bare.images, first.images)
    np.testing.assert_array_equal(bare.subset(np.array([True, False])).factors, first.factors[:1])
