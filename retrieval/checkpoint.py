"""Checkpoint files: a state_dict plus a JSON-serialisable config, loadable with weights_only=True."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
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
    import torch

    from retrieval.model import DisentangledSiamese

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        first = (str(exc).strip().splitlines() or [""])[0][:160]  # torch's unpickling errors run to a dozen lines
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise ValueError(f"{path}: not a checkpoint of this project (expected keys 'state_dict' and 'config')")
    config = blob["config"]
    model = DisentangledSiamese(config.get("backbone", "resnet50"), config.get("anatomy_dim", 128), config.get("noise_dim", 64),
                                invariance=config.get("invariance", "none"), pooling=config.get("pooling", "avg"),
                                layout=float(config.get("layout", 0.0)), layout_map=config.get("layout_map", "intensity"))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), config


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (checkpoints are named by it in index manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
