"""Tiny, fixed-seed training runs on real slices: learning happens, and a killed run resumes exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.io import Identity
from retrieval.metric import resolve_device
from retrieval.model import DisentangledSiamese
from retrieval.slices import SliceSet, load_slices
from training.data import split_patients
from training.loop import TrainConfig, train, validate, validation_set

TINY = dict(backbone="resnet18", size=32, steps_per_epoch=12, batch_patients=12, lr=5e-4, seed=0, val_fraction=0.3, device="cpu")


@pytest.fixture(scope="module")
def tiny_sets(archive: Path) -> tuple[SliceSet, SliceSet]:
    """Cardiac MR (MyoPS) and chest CT (TCGA) slices at 32×32, split by patient."""
    identity = Identity(manifest=archive / "manifest.csv")
    data = load_slices([archive / "mr" / "myops", archive / "ct" / "tcga_lung"], identity, size=32)
    validation = split_patients(data.patients.tolist(), data.modalities.tolist(), 0.3, seed=0)
    is_val = np.isin(data.patients, sorted(validation))
    return data.subset(~is_val), data.subset(is_val)


def _rows(out: Path) -> list[dict[str, float]]:
    with open(out / "metrics.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_short_training_lowers_infonce_and_beats_untrained_map(tiny_sets: tuple[SliceSet, SliceSet], tmp_path: Path) -> None:
    train_set, val_set = tiny_sets
    assert not set(train_set.patients) & set(val_set.patients)
    config = TrainConfig(epochs=5, **TINY)
    torch.manual_seed(config.seed)
    untrained = validate(DisentangledSiamese(config.backbone), validation_set(val_set, config.seed), resolve_device("cpu"))
    train(config, train_set, val_set, tmp_path)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["infonce"] < rows[0]["infonce"]
    assert max(r["map_0"] for r in rows) > untrained["map_0"]
    assert (tmp_path / "best.pt").is_file()


def test_killed_run_resumes_to_the_same_result(tiny_sets: tuple[SliceSet, SliceSet], tmp_path: Path) -> None:
    train_set, val_set = tiny_sets
    config = TrainConfig(epochs=2, **(TINY | {"steps_per_epoch": 4}))
    straight = tmp_path / "straight"
    train(config, train_set, val_set, straight)

    def die_in_second_epoch(step: int, total: int, terms: dict[str, float]) -> None:
        if step > config.steps_per_epoch + 1:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(config, train_set, val_set, resumed, on_step=die_in_second_epoch)
    assert [r["epoch"] for r in _rows(resumed)] == [1]
    train(config, train_set, val_set, resumed)
    a, b = _rows(straight), _rows(resumed)
    assert [r["epoch"] for r in b] == [1, 2]
    for key in ("infonce", "total", "map_0", "map_0.8"):
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-4, abs=1e-6)


def test_resume_refuses_another_configuration(tiny_sets: tuple[SliceSet, SliceSet], tmp_path: Path) -> None:
    train_set, val_set = tiny_sets
    config = TrainConfig(epochs=1, **(TINY | {"steps_per_epoch": 1}))
    train(config, train_set, val_set, tmp_path)
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(epochs=1, **(TINY | {"steps_per_epoch": 1, "lr": 1e-4})), train_set, val_set, tmp_path)
