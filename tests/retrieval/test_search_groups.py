"""`retrieval search --by series|study` and `--same-patient` on an index of a real archive subset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from indexer.directory import IndexDirectory
from indexer.pipeline import build_index
from retrieval.checkpoint import save_checkpoint
from retrieval.cli import app
from retrieval.io import Identity
from retrieval.model import DisentangledSiamese
from retrieval.search import rank_groups, search_path

TCGA = "ct/tcga_lung/dicom_dir/ID_{:04d}_AGE_{:04d}_CONTRAST_1_CT.dcm"
# TCGA-17-Z034 has two single-slice studies; MyoPS patients have three series (C0, DE, T2) without a study id.
SUBSET = [TCGA.format(0, 60), TCGA.format(12, 61), TCGA.format(1, 69),
          *(f"mr/myops/{p}_{s}.nii.gz" for p in (101, 102) for s in ("C0", "DE", "T2")), "mr/myops/104_C0.nii.gz"]


@pytest.fixture(scope="module")
def index_dir(archive, tmp_path_factory) -> Path:
    """An index of SUBSET (symlinked) with an untrained ResNet18 at 64²: the aggregation, not the model, is under test."""
    root = tmp_path_factory.mktemp("groups")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})
    (root / "archive").mkdir()
    for rel in SUBSET:
        (root / "archive" / Path(rel).name).symlink_to(archive / rel)
    build_index([root / "archive"], root / "idx", Identity(manifest=archive / "manifest.csv"), checkpoint=checkpoint, workers=0, show_progress=False)
    return root / "idx"


@pytest.fixture()
def directory(index_dir):
    with IndexDirectory.open(index_dir) as opened:
        yield opened


def catalog_rows(directory: IndexDirectory) -> list:
    return list(directory.catalog.slices(directory.catalog.ids().tolist()).values())


def label(row, by: str) -> str:
    """The series, or the study (a series without a study id being its own), of a catalog row."""
    return row.series_id if by == "series" else (row.study_id or row.series_id)


def match_label(match, by: str) -> str:
    return match.series_id if by == "series" else (match.study_id or match.slices[0].series_id)


@pytest.mark.parametrize("by", ["series", "study"])
def test_group_distance_is_the_mean_of_each_query_slices_best_match_and_the_query_series_is_left_out(directory, by) -> None:
    rows = catalog_rows(directory)
    series = next(r.series_id for r in rows if r.series_id.endswith("101_C0.nii.gz"))  # five slices
    own = [r for r in rows if r.series_id == series]
    query = directory.catalog.vectors([r.id for r in own], 128)
    ranked = rank_groups(directory, query, k=100, by=by, own=own)
    others = [r for r in rows if r.series_id != series]  # brute force over every catalog vector but the query's series
    distance = np.clip(0.5 * (1 - query @ directory.catalog.vectors([r.id for r in others], 128).T), 0, 1)
    groups: dict[tuple[str, str], list[int]] = {}
    for column, r in enumerate(others):
        groups.setdefault((r.patient_id, label(r, by)), []).append(column)
    assert len(ranked) == len(groups), "every other series (study) comes back when k asks for all"
    for match in ranked:
        columns = groups[(match.patient_id, match_label(match, by))]
        assert match.distance == pytest.approx(float(distance[:, columns].min(axis=1).mean()), abs=1e-5)
        assert match.n_slices == len(columns) and match.alpha == pytest.approx(np.mean([others[c].alpha for c in columns]), abs=1e-5)
        assert match.slices[0].distance <= match.distance and len(match.slices) <= 3
    assert [m.distance for m in ranked] == sorted(m.distance for m in ranked)
    top = rank_groups(directory, query, k=3, by=by, own=own)
    assert [(m.patient_id, match_label(m, by), m.distance) for m in top] == [(m.patient_id, match_label(m, by), m.distance) for m in ranked[:3]]


def test_by_study_joins_the_series_of_one_study_only(directory) -> None:
    rows = catalog_rows(directory)
    query = directory.catalog.vectors([rows[0].id], 128)
    studies = rank_groups(directory, query, k=100, by="study")
    by_key = {(m.patient_id, m.study_id) for m in studies if m.study_id}
    z034 = [m for m in studies if m.patient_id == "tcga_lung-TCGA-17-Z034"]
    assert len(z034) == 2 and all(m.n_series == 1 for m in z034), "two studies of one patient stay two results"
    myops = [m for m in studies if m.patient_id == "myops-101"]
    assert len(myops) == 3 and all(m.study_id is None and m.n_series == 1 for m in myops), "a series without a study id is its own study"
    assert len(by_key) == len({(r.patient_id, r.study_id) for r in rows if r.study_id})


def test_same_patient_names_the_patient_and_lists_its_series(archive, index_dir, tmp_path) -> None:
    query = tmp_path / "unknown.nii.gz"  # the same volume under a name the index does not know
    shutil.copy(archive / "mr/myops/101_C0.nii.gz", query)
    out = CliRunner().invoke(app, ["search", str(query), "--index", str(index_dir), "--modality", "MR", "--by", "series", "--same-patient", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    found = result["same_patient"]
    assert found["patient_id"] == "myops-101" and found["runner_up"]["patient_id"] != "myops-101"
    assert found["distance"] < found["runner_up"]["distance"]
    assert {r["patient_id"] for r in result["results"]} == {"myops-101"} and len(result["results"]) == 3
    first = result["results"][0]
    assert first["series_id"].endswith("101_C0.nii.gz") and first["distance"] == found["distance"] and first["n_slices"] == 5
    assert {"patient_id", "study_id", "series_id", "modality", "distance", "n_slices", "alpha", "n_series", "slices"} <= set(first)
    assert {"path", "slice_index", "distance", "alpha", "query_slice"} <= set(first["slices"][0])


def test_an_indexed_query_never_finds_its_own_series_and_bad_options_get_one_line_errors(archive, index_dir) -> None:
    out = CliRunner().invoke(app, ["search", str(archive / "mr/myops/102_DE.nii.gz"), "--index", str(index_dir), "--manifest",
                                   str(archive / "manifest.csv"), "--by", "series", "-k", "20", "--json"])
    assert out.exit_code == 0, out.output
    found = [r["series_id"] for r in json.loads(out.stdout)["results"]]
    assert len(found) == len(SUBSET) - 1 and not any(s.endswith("102_DE.nii.gz") for s in found)
    wrong = CliRunner().invoke(app, ["search", str(archive / "mr/myops/102_DE.nii.gz"), "--index", str(index_dir), "--by", "slice", "--same-patient"])
    assert wrong.exit_code == 2 and "--same-patient" in wrong.output and "Traceback" not in wrong.output
