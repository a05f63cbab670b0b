"""Archive readers: DICOM, NIfTI and 2D images behind one interface, keyed by patient identity."""

from retrieval.io.archive import iter_slices, read_archive, read_path, scopes
from retrieval.io.dicomweb import DicomWeb, SourceUnavailable, is_remote
from retrieval.io.identity import Identity
from retrieval.io.slices import Series, Skipped, Slice

__all__ = ["DicomWeb", "Identity", "Series", "Skipped", "Slice", "SourceUnavailable", "is_remote", "iter_slices", "read_archive", "read_path", "scopes"]
