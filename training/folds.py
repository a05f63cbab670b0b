"""Leave-one-dataset-out folds: validation on whole datasets the model never trained on.

Users bring datasets the project never saw, so model and recipe choices are made on folds that hold out a
whole dataset (manifest `dataset` column or `--group-regex`), not on patients of the training datasets.
A dataset with fewer than `min_patients` patients cannot test retrieval on its own (every gallery slice
would be relevant), so such datasets are held out together in one fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.slices import SliceSet


@dataclass(frozen=True)
class Fold:
    """One fold: its name (the held-out datasets joined by '+') and the datasets it holds out."""

    name: str
    held_out: tuple[str, ...]


def plan_folds(data: SliceSet, min_patients: int = 2) -> list[Fold]:
    """One fold per dataset with at least `min_patients` patients, plus one fold of all the smaller datasets."""
    names = sorted(set(data.datasets.tolist()))
    if "" in names:
        raise ValueError("some slices have no dataset: pass a manifest with a `dataset` column or --group-regex")
    if len(names) < 2:
        raise ValueError(f"leave-one-dataset-out needs at least 2 datasets, got {names}")
    patients = {name: len(np.unique(data.patients[data.datasets == name])) for name in names}
    folds = [Fold(name, (name,)) for name in names if patients[name] >= min_patients]
    small = tuple(name for name in names if patients[name] < min_patients)
    if small:
        folds.append(Fold("+".join(small), small))
    return folds


def split_by_datasets(data: SliceSet, held_out: tuple[str, ...]) -> tuple[SliceSet, SliceSet]:
    """(training, validation) slices: validation is every slice of the held-out datasets; no patient is in both."""
    unknown = sorted(set(held_out) - set(data.datasets.tolist()))
    if unknown:
        raise ValueError(f"no slices of held-out dataset(s) {', '.join(unknown)}; datasets are {', '.join(sorted(set(data.datasets.tolist())))}")
    is_val = np.isin(data.datasets, list(held_out))
    shared = set(data.patients[is_val].tolist()) & set(data.patients[~is_val].tolist())
    is_val |= np.isin(data.patients, sorted(shared))  # a patient who is also in a held-out dataset never trains
    return data.subset(~is_val), data.subset(is_val)


FOLD_COLUMNS = (("map_0", "mAP α=0"), ("map_0.8", "mAP α=0.8"), ("map_0_flip", "flipped"), ("map_0_rot90", "turned 90°"),
                ("spearman_alpha", "Spearman(â, α)"), ("alpha_clean_median", "median â clean"))


def fold_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of fold rows (held-out figures of each fold's final epoch), with the slice-weighted mean."""
    lines = ["| fold (held out) | patients | slices | " + " | ".join(label for _, label in FOLD_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(FOLD_COLUMNS)]
    for row in rows:
        values = " | ".join(f"{float(row[key]):.3f}" if key in row else "—" for key, _ in FOLD_COLUMNS)  # type: ignore[arg-type]
        lines.append(f"| {row['fold']} | {row['held_out_patients']} | {row['held_out_slices']} | {values} |")
    return "\n".join(lines) + "\n"
