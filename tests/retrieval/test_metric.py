"""DistortionAwareMetric: arrays, tensors and files embed the same way; distances follow the documented formula."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from retrieval.checkpoint import save_checkpoint
from retrieval.io import Identity, read_path
from retrieval.metric import BETA, DistortionAwareMetric, autocast, bf16_is_fast
from retrieval.model import DisentangledSiamese


@pytest.fixture(scope="module")
def metric(tmp_path_factory: pytest.TempPathFactory) -> DistortionAwareMetric:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, DisentangledSiamese("resnet18"), {"backbone": "resnet18", "size": 48})
    return DistortionAwareMetric.load(path, device="cpu")


@pytest.fixture(scope="module")
def ct_file() -> Path:
    return Path(get_testdata_file("CT_small.dcm"))


def _hu(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def test_file_and_array_in_modality_units_embed_identically(metric: DistortionAwareMetric, ct_file: Path) -> None:
    from_file = metric.embed(ct_file)
    from_array = metric.embed(_hu(ct_file), modality="CT")
    assert from_file.anatomy.shape == (1, 128) and from_file.noise.shape == (1, 64) and from_file.alpha.shape == (1,)
    np.testing.assert_allclose(from_file.anatomy, from_array.anatomy, atol=1e-6)
    assert 0.0 <= from_file.alpha[0] <= 1.0


def test_batching_does_not_change_embeddings(metric: DistortionAwareMetric, ct_file: Path) -> None:
    base = _hu(ct_file)
    images = [base, np.flipud(base), np.fliplr(base), np.rot90(base), np.roll(base, 40, axis=1)]  # five different slices
    one = metric.embed(images, modality="CT", batch_size=5)
    many = metric.embed(images, modality="CT", batch_size=2)
    np.testing.assert_allclose(one.anatomy, many.anatomy, atol=2e-2)  # bf16 autocast: batch-size-dependent kernels
    np.testing.assert_allclose(one.alpha, many.alpha, atol=2e-2)
    distances = np.linalg.norm(one.anatomy[:, None] - many.anatomy[None], axis=2)  # row i of one batch to row j of the other
    assert distances.diagonal().max() < 0.05
    assert distances[~np.eye(5, dtype=bool)].min() > 0.1, "the slices differ enough that rows out of order (reversed, shifted) fail"


def test_distance_is_anatomy_plus_beta_alpha_gap(metric: DistortionAwareMetric, ct_file: Path) -> None:
    base = _hu(ct_file)
    other = np.flipud(base).copy()
    ea, eb = metric.embed(base, modality="CT"), metric.embed(other, modality="CT")
    d_anat = metric.anatomy_distance(ea, eb)
    expected = 0.5 * (1 - float(ea.anatomy[0] @ eb.anatomy[0]))
    assert d_anat[0] == pytest.approx(expected, abs=1e-5)
    assert metric.distance(ea, eb)[0] == pytest.approx(d_anat[0] + BETA * abs(ea.alpha[0] - eb.alpha[0]), abs=1e-6)
    assert metric.anatomy_distance(base, base, modality="CT")[0] == pytest.approx(0.0, abs=1e-5)


def test_pydicom_datasets_and_nibabel_images_embed_as_their_files(metric: DistortionAwareMetric, ct_file: Path) -> None:
    """What `dcmread` and `nibabel.load` return embeds as the file does: rescaled, with the header's spacing and modality."""
    for path in (ct_file, Path(get_testdata_file("emri_small.dcm"))):  # one frame and ten
        from_object, from_file = metric.embed(dcmread(path)), metric.embed(path)
        frames = int(dcmread(path, stop_before_pixels=True).get("NumberOfFrames") or 1)
        assert len(from_object.alpha) == len(from_file.alpha) == frames
        np.testing.assert_allclose(from_object.anatomy, from_file.anatomy, atol=1e-6)
    volume = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    from_object, from_file = metric.embed(nibabel.load(volume), modality="MR"), metric.embed(volume, modality="MR")
    assert len(from_object.alpha) == 48  # 2 volumes × 24 slices
    np.testing.assert_allclose(from_object.anatomy, from_file.anatomy, atol=1e-6)


def test_a_format_only_nibabel_reads_embeds_as_its_nifti_conversion(metric: DistortionAwareMetric, tmp_path: Path) -> None:
    """nibabel's Philips PAR/REC phantom (9 slices × 3 dynamics of 3.75 mm pixels) in memory, against the same voxels
    and affine written as NIfTI and read by the archive reader."""
    parrec = nibabel.load(Path(nibabel.__file__).parent / "tests" / "data" / "phantom_EPI_asc_CLEAR_2_1.PAR")
    converted = tmp_path / "phantom.nii"
    nibabel.save(nibabel.Nifti1Image(np.asanyarray(parrec.dataobj), parrec.affine), converted)
    from_object, from_file = metric.embed(parrec, modality="MR"), metric.embed(converted, modality="MR")
    assert len(from_object.alpha) == 27
    np.testing.assert_allclose(from_object.anatomy, from_file.anatomy, atol=1e-6)


def test_a_dataset_made_in_memory_decodes_in_hounsfield_units(metric: DistortionAwareMetric, ct_file: Path) -> None:
    """A Dataset built from an array (no file meta, stored values with an intercept) embeds as its HU array."""
    hu = _hu(ct_file)
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns, ds.PixelSpacing = "CT", *hu.shape, [0.5, 0.5]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
    ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, -1024
    ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
    np.testing.assert_allclose(metric.embed(ds).anatomy, metric.embed(hu, "CT").anatomy, atol=1e-6)
    header_only = Dataset()
    header_only.Modality, header_only.PatientID = "CT", "p1"
    with pytest.raises(ValueError, match="<pydicom dataset>: non-image DICOM .*no image pixel data"):
        metric.embed(header_only)
    with pytest.raises(ValueError, match="DataElement is not a Dataset"):
        metric.embed(ds["Modality"])


def test_stored_ct_values_warn_and_spacing_keeps_the_field_of_view(metric: DistortionAwareMetric, ct_file: Path) -> None:
    hu = _hu(ct_file)
    with pytest.warns(UserWarning, match="stored pixel values, not Hounsfield units"):
        stored = metric.embed(dcmread(ct_file).pixel_array, modality="CT")  # CT_small: unsigned, intercept -1024
    np.testing.assert_allclose(stored.anatomy, metric.embed(hu, "CT").anatomy, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.embed(hu, modality="CT")
    reference = metric.embed(hu, "CT")
    for kept_3d in (hu[None], hu[:, :, None]):  # one slice cut as data[k:k+1] or data[:, :, k:k+1]
        np.testing.assert_allclose(metric.embed(kept_3d, "CT").anatomy, reference.anatomy, atol=1e-6)
    rows_halved = np.ascontiguousarray(hu[::2])  # 64 × 128 pixels of 2 × 1 mm: the same square field of view
    with_spacing = metric.anatomy_distance(metric.embed(rows_halved, "CT", spacing=(2.0, 1.0)), reference)[0]
    without = metric.anatomy_distance(metric.embed(rows_halved, "CT"), reference)[0]
    assert with_spacing < 0.5 * without, (with_spacing, without)
    for bad in ((0.0, 1.0), (1.0,), (float("nan"), 1.0), -2.0, "x", [(1.0, 1.0), (0.0, 1.0)]):
        with pytest.raises(ValueError, match="spacing must be a positive millimetre size or a .row, column. pair"):
            metric.embed(hu, "CT", spacing=bad)  # type: ignore[arg-type]


def test_spacing_is_one_size_for_all_raw_arrays_or_one_per_array(metric: DistortionAwareMetric, ct_file: Path) -> None:
    hu = _hu(ct_file)
    rows_halved = np.ascontiguousarray(hu[::2])
    apart = np.concatenate([metric.embed(rows_halved, "CT", spacing=(2.0, 1.0)).anatomy, metric.embed(hu, "CT").anatomy])
    together = metric.embed([rows_halved, hu], "CT", spacing=[(2.0, 1.0), (1.0, 1.0)])
    np.testing.assert_allclose(together.anatomy, apart, atol=1e-6)
    assert not np.allclose(metric.embed([rows_halved, hu], "CT").anatomy, apart, atol=1e-3)  # the spacings mattered
    np.testing.assert_allclose(metric.embed(hu, "CT", spacing=0.7).anatomy, metric.embed(hu, "CT", spacing=(0.7, 0.7)).anatomy)
    mixed = metric.embed([rows_halved, hu], "CT", spacing=[(2.0, 1.0), 1.0])  # the README's form: a number is square pixels
    np.testing.assert_allclose(mixed.anatomy, apart, atol=1e-6)
    with pytest.raises(ValueError, match="more raw arrays than the 1 spacings given"):
        metric.embed([rows_halved, hu], "CT", spacing=[(2.0, 1.0)])
    with pytest.raises(ValueError, match="3 spacings for 2 raw arrays"):
        metric.embed([rows_halved, hu], "CT", spacing=[(2.0, 1.0)] * 3)
    files_too = metric.embed([ct_file, rows_halved], "CT", spacing=[(2.0, 1.0)])  # a file brings its own spacing
    np.testing.assert_allclose(files_too.anatomy[1], apart[0], atol=1e-6)
    np.testing.assert_allclose(metric.alpha(rows_halved, "CT", spacing=(2.0, 1.0)), metric.embed(rows_halved, "CT", spacing=(2.0, 1.0)).alpha)
    whole = metric.embed(hu, "CT")  # the distances embed their raw side with the spacing given
    passed_through = metric.anatomy_distance(rows_halved, whole, "CT", spacing=(2.0, 1.0))[0]
    assert passed_through == pytest.approx(float(metric.anatomy_distance(metric.embed(rows_halved, "CT", spacing=(2.0, 1.0)), whole)[0]), abs=1e-6)
    assert passed_through < 0.5 * metric.anatomy_distance(rows_halved, whole, "CT")[0]


def test_clear_errors_for_bad_inputs(metric: DistortionAwareMetric, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality must be 'CT' or 'MR'"):
        metric.embed(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="expected a 2D slice"):
        metric.embed(np.zeros((2, 4, 32, 32), np.float32), modality="CT")
    three_slices = np.full((3, metric.size, metric.size), -1000.0, np.float32)  # a volume, not a preprocessed input
    with pytest.raises(ValueError, match="pass a volume as its nibabel image or pydicom Dataset, or as a list of 2D slices"):
        metric.embed(three_slices, modality="CT")
    assert len(metric.embed(list(three_slices), modality="CT").alpha) == 3
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    with pytest.raises(ValueError, match="broken.dcm"):
        metric.embed(broken)
    for bad, reason in ((None, "nothing to embed: got None"), (np.zeros((0, 64)), r"an empty array \(shape \(0, 64\)\) holds no slice"),
                        (np.ones((32, 32), complex), "complex pixels .*pass the magnitude"), (np.array([["a", "b"]]), "expected numeric pixels, got an array of <U1"),
                        (np.full((32, 32), np.nan), "raw array 0 has no finite pixel value"), (torch.ones(8, 8, dtype=torch.complex64), "complex pixels"),
                        (np.zeros(100), r"expected a 2D slice .*got shape \(100,\)")):
        with pytest.raises(ValueError, match=reason):
            metric.embed(bad, modality="MR")


def test_modality_in_any_case_and_the_readers_own_slices(metric: DistortionAwareMetric, ct_file: Path) -> None:
    hu = _hu(ct_file)
    np.testing.assert_allclose(metric.embed(hu, " ct").anatomy, metric.embed(hu, "CT").anatomy)
    with pytest.raises(ValueError, match="modality must be 'CT' or 'MR' for raw arrays .*got 'PET'"):
        metric.embed(hu, "pet")
    with pytest.raises(ValueError, match="modality must be 'CT' or 'MR', got 3"):
        metric.embed(hu, 3)  # type: ignore[arg-type]
    read = read_path(ct_file, Identity())
    paths_column = np.array([str(ct_file), ct_file], dtype=object)  # e.g. a DataFrame column of paths
    np.testing.assert_allclose(metric.embed(paths_column).anatomy, metric.embed([ct_file, ct_file]).anatomy, atol=1e-6)
    np.testing.assert_allclose(metric.embed(read).anatomy, metric.embed(ct_file).anatomy, atol=1e-6)
    np.testing.assert_allclose(metric.embed(read[0]).alpha, metric.embed(ct_file).alpha, atol=1e-6)


def test_autocast_uses_bf16_only_where_the_cpu_has_bf16_units() -> None:
    """On CPUs without AVX-512-BF16/AMX oneDNN emulates bf16 and runs slower than fp32, so embedding stays fp32 there."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("the CPU's flags are read from /proc/cpuinfo (Linux)")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    cpu, has_units = torch.device("cpu"), bool(flags & {"avx512_bf16", "amx_bf16"})  # what the kernel reports, not torch's probe
    assert bf16_is_fast(cpu) == has_units
    with autocast(cpu):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if has_units else torch.float32)
