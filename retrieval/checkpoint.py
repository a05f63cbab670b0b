"""Checkpoint files: a state_dict plus a JSON-serialisable config, loadable with weights_only=True."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a model is saved or built, so hashing a checkpoint stays light
    from retrieval.model import DisentangledSiamese

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default.pt"
DIGEST_CHARS = 16  # 64 bits of HMAC-SHA256: no collisions among millions of patients


def new_patient_key() -> str:
    """A fresh random key for the patient digests of one checkpoint."""
    return secrets.token_hex(16)


def patient_digest(patient_id: str, key: str) -> str:
    """Keyed hash of a patient id, so checkpoints and manifests can name patients without holding their ids."""
    return hmac.new(bytes.fromhex(key), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:DIGEST_CHARS]


def patient_record(key: str, training: set[str] | list[str], held_out: set[str] | list[str]) -> dict[str, Any]:
    """The checkpoint config's `patients` entry: digests of who trained and who was held out, and counts."""
    return {"key": key, "training": sorted(patient_digest(p, key) for p in training),
            "held_out": sorted(patient_digest(p, key) for p in held_out),
            "counts": {"training": len(training), "held_out": len(held_out)}}


def trained_on(config: dict[str, Any], patient_ids: list[str] | set[str]) -> set[str]:
    """The given patient ids that the checkpoint with this config trained on (by digest; older configs by id)."""
    record = config.get("patients")
    if isinstance(record, dict) and "key" in record:
        digests = set(record.get("training", ()))
        return {p for p in patient_ids if patient_digest(p, record["key"]) in digests}
    held_out = set(config.get("validation_patients", ()))  # configs written before digests: every other patient trained
    return {p for p in patient_ids if p not in held_out}


def save_checkpoint(path: str | Path, model: DisentangledSiamese, config: dict[str, Any], half: bool = False) -> Path:
    """Write {"state_dict", "config"} atomically (temp file + rename); `half` stores floats as fp16."""
    import torch

    path = Path(path)
    json.dumps(config)  # refuse configs that would not survive weights_only loading
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": state, "config": config}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path | None = None) -> tuple[DisentangledSiamese, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (None: the shipped checkpoint)."""
    from retrieval.model import DisentangledSiamese

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    blob = read_weights(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict) or not isinstance(blob.get("config"), dict):
        raise ValueError(f"{path}: not a checkpoint of this project (expected a dict 'state_dict' and a dict 'config')")
    config = blob["config"]
    model = DisentangledSiamese(config.get("backbone", "resnet50"), config.get("anatomy_dim", 128), config.get("noise_dim", 64),
                                invariance=config.get("invariance", "none"), pooling=config.get("pooling", "avg"),
                                layout=float(config.get("layout", 0.0)), layout_map=config.get("layout_map", "intensity"))
    problem = fit_problem(model.state_dict(), blob["state_dict"])
    if problem:
        raise ValueError(f"{path}: its weights do not fit the {config.get('backbone', 'resnet50')} model its config describes ({problem})")
    model.load_state_dict(blob["state_dict"])
    return model.eval(), config


def read_weights(path: str | Path) -> Any:
    """What torch.save wrote to `path`, loaded without running code from it (weights_only); ValueError in one line
    when the file is not one torch can load that way."""
    import torch

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a checkpoint (torch.save writes a zip archive; this file is not one)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {_load_problem(exc)})") from exc


def fit_problem(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """Why weights do not fit a model, counted (missing, unexpected and other-shaped tensors, one named each), or ''."""
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    shaped = [name for name in expected if name in given and tuple(getattr(given[name], "shape", ())) != tuple(expected[name].shape)]
    parts = [f"{len(names)} {what}, first {names[0]}" for names, what in ((missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if names]
    return "; ".join(parts)


def _load_problem(exc: Exception) -> str:
    """The line of torch.load's error that says what is wrong: its unpickler's finding (the text around it advises
    loading with weights_only=False, which would run code from the file), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for number, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error:"):
            finding = line.removeprefix("WeightsUnpickler error:").strip()
            return (finding or (lines[number + 1] if number + 1 < len(lines) else ""))[:160]
    return (lines[0] if lines else "")[:160]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (checkpoints are named by it in index manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
