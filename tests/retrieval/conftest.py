"""Fixtures for the reader and scan tests: a folder of bad files written by the test itself."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, str]:
    """Write one file per kind of bad input into tmp_path; return name → a word its reason must contain."""
    folder = tmp_path
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "truncated.dcm").write_bytes(dicom[: len(dicom) // 2])
    (folder / "random.bin").write_bytes(np.random.default_rng(3).bytes(4096))
    (folder / "notes.dcm").write_text("patient,slice\n1,2\n")
    (folder / "text.nii.gz").write_text("not a volume")
    volume = gzip.compress(nib.Nifti1Image(np.random.default_rng(5).random((32, 32, 32), np.float32), np.eye(4)).to_bytes())
    (folder / "cut.nii.gz").write_bytes(volume[: len(volume) // 2])
    buffer = folder / "whole.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer)
    (folder / "cut.png").write_bytes(buffer.read_bytes()[:200])
    buffer.unlink()
    return {
        "empty.dcm": "empty", "truncated.dcm": "truncated", "random.bin": "not an image",
        "notes.dcm": "named .dcm", "text.nii.gz": "named .gz", "cut.nii.gz": "NIfTI", "cut.png": "image",
    }
