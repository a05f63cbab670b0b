"""Fitting the α estimator: on other datasets it tracks α on a held-out one and reads its clean slices near 0; the fit
is a pure function of the seed; `retrieval calibrate` writes a checkpoint that reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from retrieval.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from retrieval.distortions import distort_mixed
from retrieval.io import Identity
from retrieval.metric import DistortionAwareMetric
from retrieval.preprocess import network_input
from retrieval.slices import SliceSet, load_slices
import training.alpha_fit
from training.alpha_fit import fit_alpha_estimator

FIT_ON = ["ct/dcm_qa_ct", "ct/ircadb", "ct/udacity_ct", "mr/open_ms/patient01"]  # head and body CT, brain MR
CARDIAC = [f"mr/myops/{n}_{s}.nii.gz" for n in (101, 102, 103, 104, 105, 106) for s in ("C0", "DE", "T2")]  # a body part it never saw
EXAMPLE4D = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"


def _slices(archive: Path, relative: list[str]) -> SliceSet:
    return load_slices([archive / r for r in relative], Identity(manifest=archive / "manifest.csv"), 64)


@pytest.fixture(scope="module")
def fitted(archive: Path):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return fit_alpha_estimator(_slices(archive, FIT_ON), seed=0)


def test_estimator_from_other_datasets_tracks_alpha_on_cardiac_mr(archive: Path, fitted) -> None:  # type: ignore[no-untyped-def]
    held_out = _slices(archive, CARDIAC)
    rng = np.random.default_rng(3)
    alphas = rng.uniform(0.0, 1.0, len(held_out)).astype(np.float32)
    images = torch.from_numpy(held_out.images)
    clean = fitted.estimate(network_input(images, held_out.modalities).numpy(), held_out.factors)
    distorted = fitted.estimate(network_input(distort_mixed(images, held_out.modalities, alphas, np.arange(len(held_out))), held_out.modalities).numpy(),
                                held_out.factors)
    tracked = spearmanr(np.concatenate([np.zeros(len(clean)), alphas]), np.concatenate([clean, distorted])).statistic
    assert tracked > 0.8, tracked  # reached 0.86 (fitted on every other dataset, docs/training.md: 0.88)
    assert np.median(clean) < 0.2, np.median(clean)  # reached 0.16 (every other dataset: 0.10)


def test_the_fit_is_a_pure_function_of_the_seed(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = _slices(archive, FIT_ON[:1])
    first, again, other = (fit_alpha_estimator(small, seed).to_config() for seed in (0, 0, 1))
    assert first == again and first != other
    monkeypatch.setattr(training.alpha_fit, "MAX_SLICES", len(small) // 2)  # a larger archive fits on a seeded sample
    sampled, resampled = (fit_alpha_estimator(small, 0).to_config() for _ in range(2))
    assert sampled == resampled and sampled != first


def _calibrate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrieval.cli", "calibrate", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_calibrate_writes_a_checkpoint_that_reports_the_estimator(tmp_path: Path) -> None:
    refused = _calibrate(EXAMPLE4D, "--modality", "MR", "--out", tmp_path / "new.pt")  # the shipped checkpoint by default
    assert refused.returncode == 2 and "none of its training patients" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / EXAMPLE4D.name).symlink_to(EXAMPLE4D)
    (folder / "broken.dcm").write_bytes(b"DICM" * 10)  # a batch skips and reports a bad file, and goes on
    done = _calibrate(folder, "--checkpoint", DEFAULT_CHECKPOINT, "--modality", "MR", "--every-patient", "--out", tmp_path / "new.pt", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["slices"] > 10 and [Path(s["path"]).name for s in summary["skipped"]] == ["broken.dcm"]
    _, config = load_checkpoint(tmp_path / "new.pt")
    shipped = DistortionAwareMetric.load(device="cpu")
    assert config["alpha_estimator"] != shipped.config["alpha_estimator"]
    assert {k: v for k, v in config.items() if not k.startswith("alpha_estimator")} == {k: v for k, v in shipped.config.items() if not k.startswith("alpha_estimator")}
    same = _calibrate(EXAMPLE4D, "--checkpoint", tmp_path / "new.pt", "--modality", "MR", "--every-patient", "--out", tmp_path / "new.pt")
    assert same.returncode == 2 and "give a new file" in same.stderr
