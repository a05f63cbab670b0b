"""Real-ish 128² slices for the evaluation tests: pydicom's CT and MR test files, skimage's camera, distorted copies."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
from skimage import data, transform

from retrieval.preprocess import prepare

SIZE = 128


def dicom_slice(name: str, frame: int | None = None) -> np.ndarray:
    """Pixels of a pydicom test file in modality units (one frame of a multi-frame file)."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    pixels = dataset.pixel_array if frame is None else dataset.pixel_array[frame]
    return apply_rescale(pixels.astype(np.float32), dataset)


@pytest.fixture(autouse=True)
def single_thread():
    """Run torch single-threaded: on these shared cores a thread pool makes small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slices() -> torch.Tensor:
    """(7, 128, 128) float32 in [0, 1]: CT, two MR, a photograph, and noisy / shifted / blurred copies of them."""
    ct = prepare(dicom_slice("CT_small.dcm"), "CT", SIZE)[0]
    mr = prepare(dicom_slice("MR-SIEMENS-DICOM-WithOverlays.dcm"), "MR", SIZE)[0]
    emri = prepare(dicom_slice("emri_small.dcm", frame=5), "MR", SIZE)[0]
    camera = transform.resize(data.camera(), (SIZE, SIZE), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(0)
    noisy_ct = np.clip(ct + rng.normal(0.0, 0.05, ct.shape), 0.0, 1.0).astype(np.float32)
    shifted_mr = np.roll(mr, 3, axis=1)
    blurred_camera = transform.rescale(transform.rescale(camera, 0.5, anti_aliasing=True), 2.0).astype(np.float32)
    return torch.from_numpy(np.stack([ct, mr, emri, camera, noisy_ct, shifted_mr, blurred_camera]))
