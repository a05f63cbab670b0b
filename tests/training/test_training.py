"""Tiny, fixed-seed training runs on real slices: learning happens, a killed run resumes exactly, folds hold out."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import training.loop
from retrieval.checkpoint import load_checkpoint, trained_on
from retrieval.io import Identity
from retrieval.metric import resolve_device
from retrieval.model import DisentangledSiamese
from retrieval.slices import SliceSet, load_slices
from training.data import split_patients
from training.folds import split_by_datasets
from training.loop import TrainConfig, check_same_run, train, validate, validation_set

# The old recipe (no augmentation, one view at inference) learns fastest at 32²: the learning test needs a minute at most.
TINY = dict(backbone="resnet18", size=32, steps_per_epoch=12, batch_patients=12, lr=5e-4, seed=0, val_fraction=0.3, device="cpu",
            augment="none", balance=0.0, instance=0.0, invariance="none")


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
    untrained = validate(DisentangledSiamese(config.backbone), validation_set(val_set, config.seed), val_set.datasets, resolve_device("cpu"))
    train(config, train_set, val_set, tmp_path)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["infonce"] < rows[0]["infonce"]
    assert rows[-1]["map_0"] > untrained["map_0"]
    _, saved = load_checkpoint(tmp_path / "final.pt")
    assert saved["epoch"] == 5 and saved["validation"]["map_0"] == pytest.approx(rows[-1]["map_0"])


@pytest.mark.parametrize("extra", [{}, {"memory": 64, "ssl_epochs": 1}], ids=["recipe", "memory-and-label-free-stage"])
def test_killed_run_resumes_to_the_same_result(tiny_sets: tuple[SliceSet, SliceSet], tmp_path: Path, extra: dict[str, int]) -> None:
    """Also with a cross-batch memory (its codes travel in last.pt) and a label-free first epoch."""
    train_set, val_set = tiny_sets
    config = TrainConfig(epochs=2, **(TINY | {"steps_per_epoch": 4} | extra))
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
    with pytest.raises(ValueError, match=r"another configuration \(lr: 0.0005 there, 0.0001 here\)"):
        train(TrainConfig(epochs=1, **(TINY | {"steps_per_epoch": 1, "lr": 1e-4})), train_set, val_set, tmp_path)


def test_a_run_saved_before_an_option_existed_resumes_at_its_default(tmp_path: Path) -> None:
    """A last.pt written before `memory`, `ssl_epochs` and `layout_map` existed ran without the first two and with the
    intensity thumbnail: the same run as one with those values, and another run than today's silhouette default."""
    current = json.loads(json.dumps(asdict(TrainConfig(epochs=3, layout_map="intensity")) | {"device": None}))
    older = {key: value for key, value in current.items() if key not in ("memory", "ssl_epochs", "layout_map")}
    check_same_run(older, current, tmp_path)
    with pytest.raises(ValueError, match="memory: 0 there, 2048 here"):
        check_same_run(older, current | {"memory": 2048}, tmp_path)
    with pytest.raises(ValueError, match="layout_map: 'intensity' there, 'silhouette' here"):
        check_same_run(older, current | {"layout_map": "silhouette"}, tmp_path)
    with pytest.raises(ValueError, match="retired: 1 there, None here"):
        check_same_run(current | {"retired": 1}, current, tmp_path)


def test_kill_during_the_last_checkpoint_write_resumes_exactly(tiny_sets: tuple[SliceSet, SliceSet], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after last.tmp is written but before it replaces last.pt: the rerun redoes that epoch from the previous last.pt."""
    train_set, val_set = tiny_sets
    config = TrainConfig(epochs=2, **(TINY | {"steps_per_epoch": 3}))
    straight = tmp_path / "straight"
    train(config, train_set, val_set, straight)
    real_replace, calls = training.loop.os.replace, []

    def die_on_second_save(src: str, dst: str) -> None:
        calls.append(dst)
        if str(dst).endswith("last.pt") and sum(str(c).endswith("last.pt") for c in calls) == 2:
            Path(src).write_bytes(Path(src).read_bytes()[:1000])  # a half-written temp file, as a kill would leave it
            raise KeyboardInterrupt
        real_replace(src, dst)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(training.loop.os, "replace", die_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(config, train_set, val_set, resumed)
    monkeypatch.setattr(training.loop.os, "replace", real_replace)
    assert (resumed / "last.tmp").is_file()
    train(config, train_set, val_set, resumed)
    a, b = _rows(straight), _rows(resumed)
    assert [r["epoch"] for r in b] == [1, 2]
    assert b[-1]["total"] == pytest.approx(a[-1]["total"], rel=1e-4)
    assert b[-1]["map_0"] == pytest.approx(a[-1]["map_0"], rel=1e-4)


def test_a_fold_never_trains_on_its_held_out_dataset(archive: Path, tmp_path: Path) -> None:
    """Held-out dataset patients are absent from the training slices and recorded (as digests) as held out, not trained."""
    identity = Identity(manifest=archive / "manifest.csv")
    data = load_slices([archive / "mr" / "myops", archive / "ct" / "dcm_qa_ct", archive / "ct" / "ircadb"], identity, size=32)
    train_set, val_set = split_by_datasets(data, ("myops",))
    assert set(val_set.datasets) == {"myops"} and "myops" not in set(train_set.datasets)
    assert not set(train_set.patients) & set(val_set.patients)
    config = TrainConfig(epochs=1, **(TINY | {"steps_per_epoch": 1, "held_out_datasets": ("myops",)}))
    train(config, train_set, val_set, tmp_path)
    _, saved = load_checkpoint(tmp_path / "final.pt")
    assert trained_on(saved, sorted(set(val_set.patients))) == set()
    assert trained_on(saved, sorted(set(train_set.patients))) == set(train_set.patients)
    assert not any(p in (tmp_path / "final.pt").read_bytes().decode("latin-1") for p in set(data.patients))  # ids never stored


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--pooling", "max", "--pooling must be one of avg, grid, got 'max'"),
    ("--invariance", "c8", "--invariance must be one of none, d4, got 'c8'"),
    ("--augment", "mixup", "augment must be one of none, d4, geometric, intensity, all, got 'mixup'"),
    ("--layout-map", "edges", "--layout_map must be one of intensity, silhouette, got 'edges'"),
    ("--ssl-epochs", "10", "--ssl_epochs must be in [0, epochs), got 10"),
    ("--memory", "128 --fused-infonce", "--memory holds codes without their layouts"),
    ("--memory", "10", "--memory must be 0 or hold at least one step's 80 codes, got 10"),
])
def test_train_refuses_unknown_recipe_choices_in_one_line_before_reading(tmp_path: Path, option: str, value: str, message: str) -> None:
    from typer.testing import CliRunner

    from retrieval.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), option, *value.split()])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_fit_refuses_an_unknown_recipe_choice_before_reading_the_archive(tmp_path: Path) -> None:
    """A Python caller of fit/fit_folds gets the same one-line refusal as the CLI, before any slice is read (the
    archive path does not even exist)."""
    from retrieval.io import Identity
    from training.loop import TrainConfig
    from training.run import fit, fit_folds

    for run in (fit, fit_folds):
        with pytest.raises(ValueError, match="^pooling must be one of avg, grid, got 'max'$"):
            run([tmp_path / "missing"], Identity(), tmp_path / "run", TrainConfig(pooling="max"), None)
    with pytest.raises(ValueError, match=r"^layout must be in \[0, 1\), got 1.0$"):
        fit([tmp_path / "missing"], Identity(), tmp_path / "run", TrainConfig(layout=1.0), None)
    assert not (tmp_path / "run").exists()
