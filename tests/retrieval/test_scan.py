"""`retrieval scan` end to end: the JSON report on the real archive, bad input, and the exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from retrieval.cli import app

runner = CliRunner()


def scan(*args: str) -> dict:
    """Run `retrieval scan --json ARGS` in-process and parse its stdout."""
    result = runner.invoke(app, ["scan", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def manifest_rows(archive: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((archive / "manifest.csv").open(encoding="utf-8")))


def slices_per_patient(report: dict) -> Counter:
    return Counter({p["patient_id"]: sum(s["n_slices"] for s in p["series"]) for p in report["patients"]})


def test_scan_with_manifest_finds_exactly_its_patients(archive: Path) -> None:
    report = scan("--manifest", str(archive / "manifest.csv"), str(archive))
    expected = Counter()
    for row in manifest_rows(archive):
        expected[row["patient_id"]] += int(row["n_slices"])
    assert slices_per_patient(report) == expected
    assert report["totals"]["patients"] == len(expected) and report["totals"]["slices"] == sum(expected.values())
    modality = {row["patient_id"]: row["modality"] for row in manifest_rows(archive)}
    assert all(p["modality"] == modality[p["patient_id"]] for p in report["patients"])
    for patient in report["patients"]:
        for series in patient["series"]:
            assert set(series) >= {"series_id", "path", "n_slices", "shape", "spacing"}
            low, high = series["value_range"]
            assert low < high and len(series["shape"]) == 2 and min(series["spacing"]) > 0
    assert {Path(s["path"]).name for s in report["skipped"]} == {"manifest.csv", "README.md", "overview.csv"}


def _expected_id_without_manifest(archive: Path, row: dict[str, str]) -> str:
    """DICOM: the header's PatientID (empty → the folder holding the file); NIfTI: the documented name rule."""
    source = archive / row["relative_path"]
    if row["format"] == "DICOM":
        first = source if source.is_file() else sorted(source.iterdir())[0]
        return pydicom.dcmread(first, stop_before_pixels=True).PatientID or first.parent.name
    leading = source.name.split("_")[0]
    return leading if leading.isdigit() else source.parent.name


def test_scan_without_manifest_keys_dicom_by_patient_id_and_nifti_by_name(archive: Path) -> None:
    report = scan("--headers-only", str(archive))
    expected = Counter()
    for row in manifest_rows(archive):
        expected[_expected_id_without_manifest(archive, row)] += int(row["n_slices"])
    assert slices_per_patient(report) == expected
    assert "TCGA-17-Z058" in expected and "101" in expected and "patient01" in expected
    modalities = {p["patient_id"]: p["modality"] for p in report["patients"]}
    assert modalities["TCGA-17-Z058"] == "CT" and modalities["101"] == "OT"  # NIfTI has no modality header


def test_scan_reports_bad_files_and_keeps_the_good_ones(tmp_path: Path, bad_files: dict[str, str]) -> None:
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "good.dcm")
    report = scan(str(tmp_path))
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad_files)
    assert all(word in reasons[name] for name, word in bad_files.items())
    assert report["totals"] == {"patients": 1, "series": 1, "slices": 1, "skipped": len(bad_files)}


@contextmanager
def unreadable(folder: Path) -> Iterator[None]:
    """Make `folder` unreadable; as root (which ignores permissions) also act as user nobody meanwhile."""
    folder.chmod(0)
    try:
        if os.geteuid() == 0:
            os.seteuid(65534)
            try:
                yield
            finally:
                os.seteuid(0)
        else:
            yield
    finally:
        folder.chmod(0o755)


def test_scan_reports_an_unreadable_folder() -> None:
    if not hasattr(os, "seteuid"):
        pytest.skip("needs POSIX permissions")
    # pytest's tmp_path sits in a root-only folder; this one is reachable by the unprivileged user
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        root.chmod(0o755)
        (root / "locked").mkdir()
        shutil.copy(get_testdata_file("MR_small.dcm"), root / "locked" / "a.dcm")
        shutil.copy(get_testdata_file("MR_small.dcm"), root / "b.dcm")
        for path in (root / "b.dcm", root / "locked" / "a.dcm"):
            path.chmod(0o644)
        assert scan(str(root))["totals"]["slices"] == 2  # readable: both files (and every import happens now)
        with unreadable(root / "locked"):
            report = scan(str(root))
    assert report["totals"]["slices"] == 1
    (skipped,) = report["skipped"]
    assert skipped["path"].endswith("locked") and "cannot read folder" in skipped["reason"]


def test_missing_path_is_the_only_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert result.stderr.strip().count("\n") == 0 and "nope: no such file or folder" in result.stderr
    empty = runner.invoke(app, ["scan", str(tmp_path)])
    assert empty.exit_code == 0 and "0 patients" in empty.stdout


def test_scan_table_lists_series_totals_and_skipped(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["scan", str(tmp_path)])
    assert result.exit_code == 0
    patient = pydicom.dcmread(tmp_path / "ct.dcm").PatientID
    assert patient in result.stdout and "ct.dcm" in result.stdout and "notes.txt" in result.stdout
    assert "1 patients, 1 series, 1 slices; 1 files skipped" in result.stdout


def test_value_ranges_are_of_finite_pixels_and_the_json_is_strict(tmp_path: Path) -> None:
    """nibabel's resampled_anat_moved.nii is NaN outside its field of view: the range is of the rest, the NaN counted."""
    import nibabel as nib
    import numpy as np

    source = Path(nib.__file__).parent / "tests" / "data" / "resampled_anat_moved.nii"
    shutil.copy(source, tmp_path / "moved.nii")
    result = runner.invoke(app, ["scan", "--json", str(tmp_path)])
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    (series,) = report["patients"][0]["series"]
    data = np.asanyarray(nib.load(source).dataobj, dtype=np.float64)
    assert series["value_range"] == pytest.approx([np.nanmin(data), np.nanmax(data)], rel=1e-6)
    assert series["non_finite_pixels"] == int(np.isnan(data).sum()) > 0
