"""Which patients a bench run may use (the checkpoint's training patients left out) and how reports name files and patients."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from eval.run import command_line
from eval.selection import Names, archive_root, held_out, select_datasets
from retrieval.checkpoint import new_patient_key, patient_record

PATIENTS = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["d"]


def test_training_patients_are_left_out_by_their_digests(make_phantoms: Callable) -> None:
    data = make_phantoms(PATIENTS, "CT")
    config = {"patients": patient_record(new_patient_key(), {"a", "c", "z"}, {"b", "d"})}
    kept, honesty = held_out(data, config, include_training=False)
    assert sorted(set(kept.patients.tolist())) == ["b", "d"] and len(kept) == 3
    assert (honesty.training, honesty.remaining, honesty.record) == (2, 2, "digests")
    assert honesty.statement().startswith("Held-out data: 2 training patients of the checkpoint left out")
    again, told = held_out(data, config, include_training=True)
    assert len(again) == len(data) and told.to_json()["left_out"] == 0
    assert told.statement().startswith("**Includes the checkpoint's training data (--include-training): 2 of these 4 patients")


def test_older_checkpoints_are_judged_by_their_validation_list_and_unrecorded_ones_are_flagged(make_phantoms: Callable) -> None:
    data = make_phantoms(PATIENTS, "MR")
    kept, honesty = held_out(data, {"validation_patients": ["b"]}, include_training=False)
    assert set(kept.patients.tolist()) == {"b"} and honesty.record == "validation list" and honesty.training == 3
    kept, honesty = held_out(data, {"backbone": "resnet18"}, include_training=False)
    assert len(kept) == len(data) and honesty.record == "none"
    assert honesty.statement().startswith("**The checkpoint does not record its training patients")


def test_a_checkpoint_trained_on_every_patient_stops_the_run(make_phantoms: Callable) -> None:
    data = make_phantoms(PATIENTS, "CT")
    config = {"patients": patient_record(new_patient_key(), set(PATIENTS), set())}
    with pytest.raises(ValueError, match="all 4 patients of this archive trained the checkpoint .* --include-training"):
        held_out(data, config, include_training=False)
    assert len(held_out(data, config, include_training=True)[0]) == len(data)


def test_whole_datasets_are_selected_by_name(make_phantoms: Callable) -> None:
    data = make_phantoms(PATIENTS, "CT", datasets=["x"] * 5 + ["y"] * 4 + ["z"])
    assert set(select_datasets(data, ["x", "z"]).datasets.tolist()) == {"x", "z"}
    assert set(select_datasets(data, exclude=["x"]).patients.tolist()) == {"c", "d"}
    assert select_datasets(data) is data
    with pytest.raises(ValueError, match="unknown dataset 'w'; this archive has x, y, z"):
        select_datasets(data, ["w"])
    with pytest.raises(ValueError, match="no slices left"):
        select_datasets(data, ["x"], ["x"])
    with pytest.raises(ValueError, match="need datasets"):
        select_datasets(make_phantoms(PATIENTS, "CT"), ["x"])


def test_reports_name_files_relative_to_the_archive_root_or_by_digest(make_phantoms: Callable, tmp_path: Path) -> None:
    (tmp_path / "ct" / "lung").mkdir(parents=True)
    (tmp_path / "ct" / "head").mkdir()
    manifest = tmp_path / "manifest.csv"
    assert archive_root([tmp_path / "ct" / "lung", tmp_path / "ct" / "head"], None) == (tmp_path / "ct").resolve()
    assert archive_root([tmp_path / "ct" / "lung"], manifest) == tmp_path.resolve()
    data = make_phantoms(["TCGA-17-Z011", "TCGA-17-Z011", "case_7"], "CT")
    data.sources = np.array([f"{tmp_path}/ct/lung/ID_0001_AGE_0069.dcm#0", f"{tmp_path}/ct/lung/ID_0002_AGE_0069.dcm#0", f"{tmp_path}/ct/head/x.dcm#3"])
    plain = Names(tmp_path.resolve()).sources(data)
    assert plain["source"].tolist() == ["ct/lung/ID_0001_AGE_0069.dcm#0", "ct/lung/ID_0002_AGE_0069.dcm#0", "ct/head/x.dcm#3"]
    assert plain["patient"].tolist() == ["TCGA-17-Z011", "TCGA-17-Z011", "case_7"]
    redacted = Names(tmp_path.resolve(), redact=True).sources(data)
    text = " ".join([*redacted["source"], *redacted["patient"]])
    assert "AGE" not in text and "TCGA" not in text and "case_7" not in text and str(tmp_path) not in text
    first, second, third = redacted["source"]
    assert first.split("#")[0] == second.split("#")[0] != third.split("#")[0]  # one digest per series (both files: series-TCGA…)
    assert third.endswith("#3") and redacted["patient"][0] == redacted["patient"][1] != redacted["patient"][2]
    assert Names(tmp_path.resolve(), redact=True).path(tmp_path / "ct" / "lung").startswith("path:")


def test_the_recorded_command_names_archive_paths_as_the_report_does(tmp_path: Path) -> None:
    (tmp_path / "mr").mkdir()
    scan = tmp_path / "mr" / "101_C0.nii.gz"
    scan.write_bytes(b"")
    argv = ["retrieval", "bench", str(tmp_path), str(scan), "--manifest", str(tmp_path / "mr"), "--out", "/elsewhere/out", "--quick"]
    assert command_line(argv, Names(tmp_path.resolve())) == "retrieval bench ARCHIVE ARCHIVE/mr/101_C0.nii.gz --manifest ARCHIVE/mr --out /elsewhere/out --quick"
    redacted = command_line(argv, Names(tmp_path.resolve(), redact=True))
    assert "101_C0" not in redacted and str(tmp_path) not in redacted and "ARCHIVE/path:" in redacted
