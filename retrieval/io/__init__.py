"""Archive readers: DICOM, NIfTI and 2D images behind one interface, keyed by patient identity."""

from retrieval.io.archive import iter_slices, read_archive, read_path
from retrieval.io.identity import Identity
from retrieval.io.slices import Series, Skipped, Slice

__all__ = ["Identity", "Series", "Skipped", "Slice", "iter_slices", "read_archive", "read_path"]
