"""Shared data for the evaluation tests: real 128² slices (pydicom's CT and MR, skimage's camera), phantoms, tiny checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
from skimage import data, transform

from retrieval.checkpoint import new_patient_key, patient_record, save_checkpoint
from retrieval.model import DisentangledSiamese
from retrieval.preprocess import prepare
from retrieval.slices import SliceSet

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


def phantoms(patients: Sequence[str], modality: str, size: int = 64, seed: int = 0, datasets: Sequence[str] | None = None) -> SliceSet:
    """Slices the test makes: a body ellipse with a few random organs, in HU for CT and arbitrary units for MR."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    images = []
    for _ in patients:
        image = np.where((x / 0.42) ** 2 + (y / 0.32) ** 2 < 1, 40.0, -1000.0)
        for cx, cy, r, value in zip(rng.uniform(-0.2, 0.2, 3), rng.uniform(-0.15, 0.15, 3), rng.uniform(0.04, 0.1, 3), rng.uniform(-100, 300, 3)):
            image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = value
        images.append(image if modality == "CT" else image + 1000.0)
    names = np.array(patients)
    return SliceSet(np.stack(images).astype(np.float32), names, np.full(len(names), modality),
                    np.array([f"/data/{p}/file.dcm#{i}" for i, p in enumerate(patients)]), None if datasets is None else np.array(datasets),
                    np.array([f"series-{p}" for p in patients]))


@pytest.fixture(scope="session")
def make_phantoms() -> Callable[..., SliceSet]:
    """The phantom maker, for tests that build their own slice sets."""
    return phantoms


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Write a randomly initialised (seeded) ResNet18 checkpoint with a 64×64 input and, optionally, a record of its training patients."""
    folder = tmp_path_factory.mktemp("checkpoints")

    def write(name: str, training: Sequence[str] | None = None, held_out: Sequence[str] = ()) -> Path:
        torch.manual_seed(0)
        config: dict[str, object] = {"backbone": "resnet18", "size": 64}
        if training is not None:
            config["patients"] = patient_record(new_patient_key(), set(training), set(held_out))
        return save_checkpoint(folder / f"{name}.pt", DisentangledSiamese("resnet18"), config)

    return write


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    """A tiny checkpoint that records training on one patient of the archive subset (myops-101)."""
    return make_checkpoint("tiny", training=["myops-101"], held_out=["myops-102"])
