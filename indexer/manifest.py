"""DIR/manifest.json: what an index was built with, so a different checkpoint or preprocessing is refused.

It also records the digest of the FAISS store at its last save (see indexer/integrity.py). The
checkpoint's config is copied without patient identifiers: only keyed digests (config["patients"])
and counts travel into an index; a legacy list of raw validation patient ids is dropped.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrieval.embeddings import layout_columns

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
RAW_PATIENT_KEYS = ("validation_patients",)  # legacy checkpoint config entries that list raw patient ids


class IndexMismatch(ValueError):
    """The index directory was built with another checkpoint, preprocessing or format."""


def preprocessing(size: int) -> dict[str, Any]:
    """The preprocessing that produced the vectors (changing any of it changes every embedding)."""
    from retrieval import preprocess

    return {
        "size": size,
        "ct_windows": [list(w) for w in preprocess.CT_WINDOWS],
        "mr_percentiles": list(preprocess.MR_PERCENTILES),
        "empty_rule": {"ct_foreground_hu": preprocess.CT_FOREGROUND_HU, "mr_foreground_fraction": preprocess.MR_FOREGROUND_FRACTION, "min_foreground": preprocess.MIN_FOREGROUND},
    }


def without_patient_ids(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint config as an index may copy it: raw patient id lists replaced by their counts."""
    clean = {k: v for k, v in config.items() if k not in RAW_PATIENT_KEYS}
    for key in RAW_PATIENT_KEYS:
        if isinstance(config.get(key), list):
            clean[f"{key}_count"] = len(config[key])
    return clean


def versions() -> dict[str, str]:
    """Versions of the code that wrote the index."""
    import faiss
    import sqlalchemy
    import torch

    import retrieval

    return {"retrieval": retrieval.__version__, "torch": torch.__version__, "faiss": faiss.__version__, "sqlalchemy": sqlalchemy.__version__, "python": platform.python_version()}


@dataclass
class Manifest:
    """Checkpoint (by SHA-256), embedding size, preprocessing, index kind and versions of one index directory."""

    checkpoint_sha256: str
    checkpoint_path: str
    checkpoint_config: dict[str, Any]
    embedding_size: int
    preprocessing: dict[str, Any]
    index: dict[str, Any]
    versions: dict[str, str] = field(default_factory=versions)
    format: int = FORMAT_VERSION
    updated: str = ""
    store: dict[str, Any] = field(default_factory=dict)  # the FAISS file at its last save: digest, vectors, kind
    catalog: str = ""  # the catalog's URL (no password) when it is not DIR/catalog.sqlite

    def __post_init__(self) -> None:
        self.checkpoint_config = without_patient_ids(self.checkpoint_config)  # also cleans manifests written before

    def check(self, directory: Path, checkpoint_sha256: str, checkpoint_path: str, preprocessing: dict[str, Any]) -> None:
        """Raise IndexMismatch unless this checkpoint and preprocessing are the ones the index was built with."""
        if self.format != FORMAT_VERSION:
            raise IndexMismatch(f"{directory}: index format {self.format}, this version reads format {FORMAT_VERSION}; rebuild it into a new --index DIR")
        if checkpoint_sha256 != self.checkpoint_sha256:
            raise IndexMismatch(
                f"{directory}: built with checkpoint {self.checkpoint_sha256[:12]} ({self.checkpoint_path}), "
                f"but {checkpoint_path} is {checkpoint_sha256[:12]}; use that checkpoint or another --index DIR"
            )
        if preprocessing != self.preprocessing:
            raise IndexMismatch(f"{directory}: built with preprocessing {self.preprocessing}, this code uses {preprocessing}; rebuild into another --index DIR")


def new_manifest(checkpoint_sha256: str, checkpoint_path: str | Path, config: dict[str, Any], size: int, kind: str = "flat", catalog: str = "") -> Manifest:
    """The manifest a new index built with this checkpoint gets."""
    return Manifest(
        checkpoint_sha256=checkpoint_sha256, checkpoint_path=str(Path(checkpoint_path).resolve()), checkpoint_config=config,
        embedding_size=int(config.get("anatomy_dim", 128)) + layout_columns(config), preprocessing=preprocessing(size), index={"requested": kind, "kind": "flat"},
        catalog=catalog,
    )


def read_manifest(directory: str | Path) -> Manifest | None:
    """The manifest of an index directory, or None when there is none yet."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise IndexMismatch(f"{path}: not a manifest of this tool ({exc})") from exc


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file, fsync, rename)."""
    path = Path(directory) / MANIFEST_NAME
    manifest.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(asdict(manifest), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
