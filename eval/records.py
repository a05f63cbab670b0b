"""Per-query measurements of a bench run: what every figure is computed from, stored in results.json so runs can be pooled.

Layout (lists aligned to the run's `alphas`, archive `levels` and query `variants`; Q queries, G gallery slices):

    queries:  source, patient, dataset, modality (Q strings), relevant (Q ints: gallery slices of the query's patient)
    methods:  NAME → query/archive/variants: {ap, p1, map_r, r_precision: levels × Q},
                     track (A × Q: d(x, D_α(x))), identity (Q), and for the learned metric alpha_hat (A × Q)
    gallery:  the learned metric's calibration data, per gallery slice (G): dataset, modality,
              alpha_hat_clean, mixed_alpha (the true α of the mixed level) and alpha_hat_mixed
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

PROTOCOLS = ("query", "archive", "variants")
QUERY_FIELDS = ("source", "patient", "dataset", "modality", "relevant")
DIGITS = 6  # enough for figures reported with three decimals, small enough for JSON


@dataclass
class Records:
    """Every per-query (and, for calibration, per-gallery-slice) measurement of one or more pooled runs."""

    alphas: list[float]
    levels: list[str]
    variants: list[str]
    queries: dict[str, np.ndarray]
    methods: dict[str, dict[str, Any]]
    gallery: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries["patient"])

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (NaN as null, floats rounded to DIGITS decimals)."""
        return {"queries": {k: _plain(v) for k, v in self.queries.items()},
                "methods": {name: _plain(record) for name, record in self.methods.items()},
                "gallery": {k: _plain(v) for k, v in self.gallery.items()}}

    @staticmethod
    def from_json(blob: dict[str, Any], alphas: Sequence[float], levels: Sequence[str], variants: Sequence[str]) -> "Records":
        """Records back from results.json's `per_query` and the run's grids."""
        return Records(list(alphas), list(levels), list(variants), {k: _array(v) for k, v in blob["queries"].items()},
                       {name: _arrays(record) for name, record in blob["methods"].items()},
                       {k: _array(v) for k, v in blob.get("gallery", {}).items()})


def concat(runs: Sequence[Records]) -> Records:
    """Several runs' records as one (queries and gallery slices concatenated); grids must match; methods in every run kept."""
    first = runs[0]
    for run in runs[1:]:
        for name in ("alphas", "levels", "variants"):
            if getattr(run, name) != getattr(first, name):
                raise ValueError(f"runs differ in {name}: {getattr(first, name)} and {getattr(run, name)}")
    names = [n for n in first.methods if all(n in r.methods for r in runs)]
    methods = {n: _join([r.methods[n] for r in runs]) for n in names}
    gallery_keys = set.intersection(*(set(r.gallery) for r in runs))
    return Records(first.alphas, first.levels, first.variants, _join([r.queries for r in runs]), methods,
                   {k: np.concatenate([r.gallery[k] for r in runs]) for k in sorted(gallery_keys)})


def _join(parts: Sequence[Any]) -> Any:
    """Nested dicts of arrays joined along the query (last) axis."""
    if isinstance(parts[0], dict):
        return {k: _join([p[k] for p in parts]) for k in parts[0] if all(k in p for p in parts)}
    return np.concatenate(parts, axis=-1)


def _plain(value: Any) -> Any:
    """Arrays (nested in dicts) as lists of rounded floats, ints or strings, NaN as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.astype(np.int64).tolist()
    if array.dtype.kind == "f":
        return np.where(np.isfinite(array), np.round(array, DIGITS), np.nan).astype(object).tolist() if array.size else []
    return array.astype(str).tolist()


def _array(values: Any) -> np.ndarray:
    """A JSON list back as an array: numbers with None as NaN (ints stay ints), or strings."""
    flat = np.asarray(values, dtype=object).ravel()
    if not flat.size:
        return np.asarray(values, dtype=np.float64)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return np.asarray(values, dtype=np.int64)
    if all(v is None or isinstance(v, (int, float)) for v in flat):
        return np.asarray(values, dtype=np.float64)  # None → NaN
    return np.asarray(values, dtype=str)


def _arrays(record: Any) -> Any:
    """Nested dicts of JSON lists as arrays."""
    return {k: _arrays(v) for k, v in record.items()} if isinstance(record, dict) else _array(record)


def nan_to_none(value: Any) -> Any:
    """NaN floats as None anywhere in a JSON-able structure (json would write NaN, which is not JSON)."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(results: dict[str, Any]) -> str:
    """results.json text: indented objects and lists of lists, but every list of numbers or strings on one line."""
    return _encode(nan_to_none(results), 0) + "\n"


def _encode(value: Any, depth: int) -> str:
    """JSON of one value at an indentation depth (see `dumps`)."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_encode(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _encode(v, depth + 1) for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)
