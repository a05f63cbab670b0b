"""Archive readers: DICOM, NIfTI and 2D images behind one interface, keyed by patient identity."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.io.archive import is_reader_object, iter_slices, object_slices, read_archive, read_path, scopes
    from retrieval.io.dicomweb import DicomWeb, SourceUnavailable, is_remote
    from retrieval.io.identity import Identity
    from retrieval.io.limits import Limits
    from retrieval.io.slices import Series, Skipped, Slice

_HOMES = {
    "iter_slices": "archive", "read_archive": "archive", "read_path": "archive", "Identity": "identity",
    "Limits": "limits", "Series": "slices", "Skipped": "slices", "Slice": "slices",
    "scopes": "archive", "object_slices": "archive", "is_reader_object": "archive", "DicomWeb": "dicomweb", "SourceUnavailable": "dicomweb", "is_remote": "dicomweb",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Import the reader modules on first use, so the CLI can read `Limits` defaults without loading numpy."""
    if name not in _HOMES:
        raise AttributeError(f"module 'retrieval.io' has no attribute {name!r}")
    return getattr(import_module(f"retrieval.io.{_HOMES[name]}"), name)
