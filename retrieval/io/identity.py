"""Patient identity and modality of a source file: manifest entry, DICOM header, regex or a default rule.

Order for the patient id: a manifest entry covering the file (the file itself or a folder above it;
the deepest entry wins) > DICOM PatientID > the first group of `patient_regex` on the absolute path >
the default rule: a file name that starts with digits and `_` or `-` (`101_C0.nii.gz` → `101`) gives
those digits, anything else the name of the folder that holds the file.
Order for the modality: manifest > DICOM Modality > the `modality` flag > `OT`; CT and MR are kept,
every other value becomes `OT`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.io.slices import MODALITIES

_LEADING_ID = re.compile(r"^(\d+)[_-]")
_MODALITY_ALIASES = {"MRI": "MR", "CT": "CT", "MR": "MR"}


def normalise_modality(value: str | None) -> str:
    """CT or MR when the value says so (case-insensitive, MRI → MR), otherwise OT."""
    if not value:
        return "OT"
    return _MODALITY_ALIASES.get(value.strip().upper(), "OT")


def default_patient(path: Path) -> str:
    """Default rule: leading digits of names like `101_C0.nii.gz`, else the parent folder's name."""
    match = _LEADING_ID.match(path.name)
    if match:
        return match.group(1)
    return path.parent.name or path.stem


def read_manifest(manifest: Path) -> dict[Path, tuple[str, str | None, str | None]]:
    """Map each manifest row's resolved path (relative to the CSV's folder, never outside it) to (patient_id, modality, dataset)."""
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest}: no such file")
    root = manifest.resolve().parent
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"relative_path", "patient_id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"manifest {manifest}: missing column(s) {', '.join(sorted(missing))}")
        entries: dict[Path, tuple[str, str | None, str | None]] = {}
        for line, row in enumerate(reader, start=2):
            relative, patient = (row.get("relative_path") or "").strip(), (row.get("patient_id") or "").strip()
            if not relative or not patient:
                raise ValueError(f"manifest {manifest}: line {line} has an empty relative_path or patient_id")
            inside = os.path.normpath(root / relative)  # lexically: a symlinked folder inside the manifest's folder is fine
            if Path(relative).is_absolute() or not (inside == str(root) or inside.startswith(str(root).rstrip(os.sep) + os.sep)):
                raise ValueError(f"manifest {manifest}: line {line}: relative_path {relative!r} is outside the manifest's folder")
            modality = (row.get("modality") or "").strip() or None
            dataset = (row.get("dataset") or "").strip() or None
            entries[(root / relative).resolve()] = (patient, modality, dataset)
    return entries


@dataclass(frozen=True)
class Identity:
    """How to name the patient and modality of each source file (the CLI's shared identity options)."""

    manifest: Path | None = None
    patient_regex: str | None = None
    modality: str | None = None
    group_regex: str | None = None
    _entries: dict[Path, tuple[str, str | None, str | None]] = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _group: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Load the manifest and compile the regex once, so bad options fail before any file is read."""
        if self.modality is not None and normalise_modality(self.modality) not in MODALITIES[:2]:
            raise ValueError(f"modality must be CT or MR, got {self.modality!r}")
        for name, label, pattern in (("_regex", "patient", self.patient_regex), ("_group", "group", self.group_regex)):
            try:
                object.__setattr__(self, name, re.compile(pattern) if pattern else None)
            except re.error as exc:
                raise ValueError(f"{label} regex {pattern!r}: {exc}") from None
        object.__setattr__(self, "_entries", read_manifest(Path(self.manifest)) if self.manifest else {})

    def entry(self, path: Path) -> tuple[str, str | None, str | None] | None:
        """The manifest (patient_id, modality) covering `path`: the file's own row or its deepest folder's."""
        if not self._entries:
            return None
        resolved = path.resolve()
        for candidate in (resolved, *resolved.parents):
            if candidate in self._entries:
                return self._entries[candidate]
        return None

    def patient(self, path: Path, header_id: str | None = None) -> str:
        """Patient id of a file: manifest > header PatientID > regex group > default rule."""
        entry = self.entry(path)
        if entry:
            return entry[0]
        if header_id and header_id.strip():
            return header_id.strip()
        if self._regex is not None:
            match = self._regex.search(path.resolve().as_posix())
            if match:
                return match.group(1) if match.groups() else match.group(0)
        return default_patient(path)

    def modality_of(self, path: Path, header_modality: str | None = None) -> str:
        """Modality of a file (CT, MR or OT): manifest > header > flag > OT."""
        entry = self.entry(path)
        if entry and entry[1]:
            return normalise_modality(entry[1])
        return normalise_modality(header_modality or self.modality)

    def dataset(self, path: Path) -> str:
        """Dataset (group) of a file for leave-one-dataset-out work: manifest `dataset` > `group_regex` group > ''."""
        entry = self.entry(path)
        if entry and entry[2]:
            return entry[2]
        if self._group is not None:
            match = self._group.search(path.resolve().as_posix())
            if match:
                return match.group(1) if match.groups() else match.group(0)
        return ""
