"""`retrieval train` end to end: read the archive, split patients, train with a progress bar, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from retrieval.io import Identity
from retrieval.slices import cached_slices
from training.data import split_patients
from training.loop import TrainConfig, train


def fit(paths: Sequence[Path], identity: Identity, out_dir: Path, config: TrainConfig, cache_dir: Path | None, quiet: bool = False) -> dict[str, Any]:
    """Train on `paths` into `out_dir` (resuming if a run is there); returns the last epoch's figures."""
    data = cached_slices(paths, identity, config.size, cache_dir)
    validation = split_patients(data.patients.tolist(), data.modalities.tolist(), config.val_fraction, config.seed)
    is_val = np.isin(data.patients, sorted(validation))
    train_data, val_data = data.subset(~is_val), data.subset(is_val)
    if len(val_data) == 0:
        raise ValueError("no validation patients: raise --val-fraction or add patients")
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task("train", total=config.epochs * config.steps_per_epoch, loss=float("nan"))

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            progress.update(task, completed=step, loss=terms["total"])

        state = train(config, train_data, val_data, out_dir, on_step)
    history = state["history"]
    return {"out": str(out_dir), "epochs": len(history), "last": history[-1] if history else None,
            "train_slices": len(train_data), "val_slices": len(val_data), "val_patients": sorted(validation)}
