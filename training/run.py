"""`retrieval train` end to end: read the archive, hold out patients or whole datasets, train with a progress bar."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from retrieval.io import Identity
from retrieval.slices import SliceSet, cached_slices
from training.data import split_patients
from training.folds import fold_table, plan_folds, split_by_datasets
from training.loop import TrainConfig, train


def split(data: SliceSet, config: TrainConfig) -> tuple[SliceSet, SliceSet]:
    """Training and validation slices: the held-out datasets if any, else a seeded patient split (may be empty)."""
    if config.held_out_datasets:
        return split_by_datasets(data, tuple(config.held_out_datasets))
    validation = split_patients(data.patients.tolist(), data.modalities.tolist(), config.val_fraction, config.seed)
    is_val = np.isin(data.patients, sorted(validation))
    return data.subset(~is_val), data.subset(is_val)


def _train_with_progress(config: TrainConfig, train_data: SliceSet, val_data: SliceSet, out_dir: Path, label: str, quiet: bool) -> dict[str, Any]:
    """train() under a rich progress bar on stderr."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(label, total=config.epochs * config.steps_per_epoch, loss=float("nan"))

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            progress.update(task, completed=step, loss=terms["total"])

        return train(config, train_data, val_data, out_dir, on_step)


def fit(paths: Sequence[Path], identity: Identity, out_dir: Path, config: TrainConfig, cache_dir: Path | None, quiet: bool = False) -> dict[str, Any]:
    """Train on `paths` into `out_dir` (resuming if a run is there); returns the last epoch's figures."""
    config.check()
    data = cached_slices(paths, identity, config.size, cache_dir)
    train_data, val_data = split(data, config)
    state = _train_with_progress(config, train_data, val_data, out_dir, "train", quiet)
    history = state["history"]
    return {"out": str(out_dir), "epochs": len(history), "last": history[-1] if history else None,
            "train_slices": len(train_data), "val_slices": len(val_data), "val_patients": int(len(np.unique(val_data.patients))),
            "held_out_datasets": list(config.held_out_datasets)}


def fit_folds(paths: Sequence[Path], identity: Identity, out_dir: Path, config: TrainConfig, cache_dir: Path | None,
              quiet: bool = False) -> dict[str, Any]:
    """Leave-one-dataset-out: one run per fold in out_dir/<fold>/, then out_dir/folds.json and folds.md with each fold's held-out figures."""
    config.check()
    data = cached_slices(paths, identity, config.size, cache_dir)
    rows = []
    for fold in plan_folds(data):
        fold_config = replace(config, held_out_datasets=fold.held_out)
        train_data, val_data = split_by_datasets(data, fold.held_out)
        state = _train_with_progress(fold_config, train_data, val_data, out_dir / fold.name, fold.name, quiet)
        rows.append({"fold": fold.name, "held_out": list(fold.held_out), "train_patients": int(len(np.unique(train_data.patients))),
                     "held_out_patients": int(len(np.unique(val_data.patients))), "held_out_slices": len(val_data),
                     "modalities": sorted(set(val_data.modalities.tolist())), **state["history"][-1]})
    summary = {"out": str(out_dir), "folds": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "folds.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "folds.md").write_text(fold_table(rows))
    return summary
