"""`retrieval link` on indexes of a real archive subset: duplicates, the calibrated threshold, id-blind pairing, two indexes."""

from __future__ import annotations

import csv
import hashlib
import json
from itertools import combinations
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
from retrieval.link import link
from retrieval.model import DisentangledSiamese

DIR = "ct/tcga_lung/dicom_dir/"
DUPLICATES = [("ID_0010_AGE_0060_CONTRAST_1_CT.dcm", "ID_0013_AGE_0060_CONTRAST_1_CT.dcm"), ("ID_0065_AGE_0082_CONTRAST_0_CT.dcm", "ID_0066_AGE_0082_CONTRAST_0_CT.dcm")]
SUBSET = [DIR + name for pair in DUPLICATES for name in pair] + [DIR + "ID_0000_AGE_0060_CONTRAST_1_CT.dcm", DIR + "ID_0012_AGE_0061_CONTRAST_1_CT.dcm",
          DIR + "ID_0001_AGE_0069_CONTRAST_1_CT.dcm", *(f"mr/myops/{p}_{s}.nii.gz" for p in (101, 102, 104) for s in ("C0", "DE", "T2"))]
RENAMED = ["mr/myops/101_C0.nii.gz", "mr/myops/102_DE.nii.gz", "mr/myops/104_T2.nii.gz", DIR + "ID_0001_AGE_0069_CONTRAST_1_CT.dcm"]


@pytest.fixture(scope="module")
def built(archive, tmp_path_factory) -> dict[str, Path]:
    """Index A: SUBSET under the manifest's ids; index B: RENAMED under new ids (subject-N). Untrained ResNet18 at 64²."""
    root = tmp_path_factory.mktemp("link")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "tiny.pt", DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 64})
    for name, files in (("a", SUBSET), ("b", RENAMED)):
        (root / name).mkdir()
        for rel in files:
            (root / name / Path(rel).name).symlink_to(archive / rel)
    with (root / "b" / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["relative_path", "patient_id", "modality"])
        writer.writerows([Path(rel).name, f"subject-{n}", "CT" if rel.startswith("ct") else "MR"] for n, rel in enumerate(RENAMED))
    build_index([root / "a"], root / "idx_a", Identity(manifest=archive / "manifest.csv"), checkpoint=checkpoint, workers=0, show_progress=False)
    build_index([root / "b"], root / "idx_b", Identity(manifest=root / "b" / "manifest.csv"), checkpoint=checkpoint, workers=0, show_progress=False)
    return {"a": root / "idx_a", "b": root / "idx_b"}


def series_vectors(directory: IndexDirectory) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    """(patient, series) → (modality, its slices' vectors), straight from the catalog."""
    rows = directory.catalog.slices(directory.catalog.ids().tolist()).values()
    out: dict[tuple[str, str], list] = {}
    for r in rows:
        out.setdefault((r.patient_id, r.series_id), [r.modality, []])[1].append(r.id)
    return {key: (modality, directory.catalog.vectors(ids, 128)) for key, (modality, ids) in out.items()}


def chamfer(x: np.ndarray, y: np.ndarray) -> float:
    distance = np.clip(0.5 * (1 - x @ y.T), 0, 1)
    return float(0.5 * (distance.min(axis=1).mean() + distance.min(axis=0).mean()))


def run(*args: str) -> dict:
    result = CliRunner().invoke(app, ["link", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_byte_identical_files_are_duplicates_and_the_threshold_keeps_its_false_match_rate(archive, built) -> None:
    result = run("--index", str(built["a"]), "--false-rate", "0.05")
    sums: dict[str, set[str]] = {}
    for rel in SUBSET:
        sums.setdefault(hashlib.sha256((archive / rel).read_bytes()).hexdigest(), set()).add(Path(rel).name)
    expected = sorted(sorted(names) for names in sums.values() if len(names) > 1)
    assert expected == sorted(sorted(p) for p in DUPLICATES)
    assert sorted(sorted(Path(f["path"]).name for f in d["files"]) for d in result["duplicates"]) == expected

    with IndexDirectory.open(built["a"]) as directory:
        series = series_vectors(directory)
    positives, negatives = [], []
    for (ka, (ma, va)), (kb, (mb, vb)) in combinations(series.items(), 2):
        if ma == mb:
            (positives if ka[0] == kb[0] else negatives).append(chamfer(va, vb))
    cal, tolerance = result["calibration"], 1e-6  # float32 in the product, float64 here
    negatives, positives = np.array(negatives), np.array(positives)
    assert (cal["positives"], cal["negatives"]) == (len(positives), len(negatives))
    for rate, values in ((cal["false_match_rate"], negatives), (cal["recall"], positives)):
        assert np.mean(values < cal["threshold"] - tolerance) <= rate <= np.mean(values < cal["threshold"] + tolerance)
    assert cal["false_match_rate"] <= 0.05 < np.mean(negatives <= cal["threshold"] + tolerance), "the largest threshold keeping the rate"
    for pair in result["pairs"]:
        assert pair["a"]["patient_id"] != pair["b"]["patient_id"] and pair["distance"] < cal["threshold"]
        assert pair["evidence"][0]["distance"] <= pair["distance"] + 1e-6


def test_ignoring_ids_pairs_series_and_grades_them_against_the_ids(built) -> None:
    with IndexDirectory.open(built["a"]) as directory:
        result = link([directory], ["A"], ignore_ids=True, false_rate=0.05)
    pairs, grade = result["pairs"], result["grading"]
    assert result["unit"] == "series" and all(p["distance"] < result["calibration"]["threshold"] for p in pairs)
    assert grade["pairs_found"] == len(pairs) and grade["true_pairs"] == sum(p["same_id"] for p in pairs)
    assert grade["false_pairs"] == len(pairs) - grade["true_pairs"]
    assert grade["recall"] == pytest.approx(result["calibration"]["recall"]), "id-blind pairs of one id are the calibration positives"
    assert grade["patients_with_several_series"] == 4  # Z034 (two studies) and three MyoPS patients (C0, DE, T2)
    linked = {frozenset((p["a"]["series_id"], p["b"]["series_id"])) for p in pairs}
    for group in result["groups"]:
        ids = {s["series_id"] for s in group}
        assert len(ids) >= 2 and all(any(pair <= ids and s in pair for pair in linked) for s in ids)


def test_two_indexes_pair_the_same_subjects_under_new_ids(built) -> None:
    result = run("--index", str(built["a"]), "--index", str(built["b"]), "--threshold", "0.001")
    truth = {("myops-101", "subject-0"), ("myops-102", "subject-1"), ("myops-104", "subject-2"), ("tcga_lung-TCGA-17-Z011", "subject-3")}
    found = {(p["a"]["patient_id"], p["b"]["patient_id"]) for p in result["pairs"]}
    assert found == truth, "identical series link at any threshold, and nothing else comes as close"
    assert all(not p["same_id"] and p["series"][0]["modality"] == p["series"][1]["modality"] for p in result["pairs"])
    shared = {Path(f["path"]).name for d in result["duplicates"] for f in d["files"] if f["index"] == str(built["b"])}
    assert shared == {Path(rel).name for rel in RENAMED}, "the same files in two datasets are duplicates across them"
    calibrated = run("--index", str(built["a"]), "--index", str(built["b"]))
    assert calibrated["calibration"]["target"] == 0.001 and truth <= {(p["a"]["patient_id"], p["b"]["patient_id"]) for p in calibrated["pairs"]}


def test_an_empty_index_is_refused_in_one_line(tmp_path) -> None:
    from indexer.manifest import new_manifest

    IndexDirectory.open(tmp_path / "idx", new_manifest("a" * 64, tmp_path / "m.pt", {"backbone": "resnet18", "size": 64}, 64), writable=True).close()
    result = CliRunner().invoke(app, ["link", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'idx'}: the index holds no slices to link; index an archive into it first\n"
