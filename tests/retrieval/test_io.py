"""Readers on real files: pydicom's and nibabel's test data, files the tests write, and bad input."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nibabel_data
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.pixels import apply_modality_lut

from retrieval.io import Identity, Series, Skipped, Slice, iter_slices, object_slices, read_archive, read_path
from retrieval.io.nifti import slice_axis


def pixels(name: str) -> np.ndarray:
    """All slices of one pydicom test file, stacked in reading order."""
    return np.stack([s.pixels for s in read_path(get_testdata_file(name))])


def test_every_pydicom_test_file_is_read_or_skipped_with_a_reason() -> None:
    files = [f for f in get_testdata_files() if os.path.isfile(f)]  # the list also names a few folders
    assert len(files) > 200, "pydicom-data is not installed: the corpus is incomplete"
    seen: dict[str, list[Slice | Skipped]] = {}
    for name in files:
        for item in iter_slices([name]):
            seen.setdefault(item.path, []).append(item)
            if isinstance(item, Skipped):
                assert item.reason and "\n" not in item.reason
            else:
                assert item.pixels.dtype == np.float32 and item.pixels.ndim == 2
    assert set(seen) >= {os.path.abspath(f) for f in files}
    reason = {Path(p).name: items[0].reason for p, items in seen.items() if isinstance(items[0], Skipped)}
    assert "Structure Set" in reason["rtstruct.dcm"]
    assert "SR Storage" in reason["test-SR.dcm"] and "Plan" in reason["rtplan.dcm"]
    assert "Waveform" in reason["waveform_ecg.dcm"] and "DICOMDIR" in reason["DICOMDIR"]
    assert "truncated" in reason["MR_truncated.dcm"]
    assert "Dose" in reason["rtdose.dcm"] and "Segmentation" in reason["liver.dcm"]
    assert "localizer" in reason["6293"] and "localizer" in reason["6924"]  # dicomdirtests' CT scouts (ImageType LOCALIZER)
    read = {Path(p).name for p, items in seen.items() if isinstance(items[0], Slice)}
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "US1_J2KR.dcm", "emri_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg.dcm"} <= read


@pytest.mark.parametrize(
    "plain, compressed",
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("emri_small.dcm", "emri_small_RLE.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
        ("OBXXXX1A_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"),
        ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
        ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm"),  # JPEG lossless (process 14)
        ("US1_UNCR.dcm", "US1_J2KR.dcm"),
        ("693_UNCR.dcm", "693_J2KR.dcm"),
        ("MR2_UNCI.dcm", "MR2_J2KI.dcm"),  # *_UNCI holds the decoded irreversible JPEG 2000
        ("693_UNCI.dcm", "693_J2KI.dcm"),
    ],
)
def test_lossless_codecs_decode_to_the_uncompressed_twin(plain: str, compressed: str) -> None:
    expected, decoded = pixels(plain), pixels(compressed)
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    "reference, lossy, max_error",
    [
        ("SC_rgb_dcmtk_ebcr_dcmd.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", 1.0),  # JPEG baseline vs dcmtk's decoding
        ("SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg.dcm", 1.0),
        ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", 4.0),  # JPEG baseline vs the original (quantised)
        ("SC_rgb.dcm", "SC_rgb_jls_lossy_line.dcm", 2.0),  # JPEG-LS near-lossless, NEAR=2
        ("SC_rgb.dcm", "SC_rgb_jls_lossy_sample.dcm", 2.0),
    ],
)
def test_lossy_codecs_stay_within_their_tolerance(reference: str, lossy: str, max_error: float) -> None:
    expected, decoded = pixels(reference), pixels(lossy)
    assert decoded.shape == expected.shape
    error = np.abs(decoded - expected)
    assert error.max() <= max_error + 1e-4 and error.mean() < 1.0


def test_ct_pixels_are_hounsfield_units() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    (ct,) = read_path(path)
    assert ds.RescaleIntercept != 0 and ct.modality == "CT"
    np.testing.assert_allclose(ct.pixels, apply_modality_lut(ds.pixel_array, ds), atol=1e-3)
    assert ct.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert ct.patient_id == ds.PatientID and ct.study_id == ds.StudyInstanceUID


def test_multiframe_files_expand_to_ordered_frames() -> None:
    path = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    slices = read_path(path)
    assert [s.index for s in slices] == list(range(int(ds.NumberOfFrames)))
    np.testing.assert_array_equal(np.stack([s.pixels for s in slices]), ds.pixel_array.astype(np.float32))
    enhanced = read_path(get_testdata_file("eCT_Supplemental.dcm"))
    positions = [s.position for s in enhanced]
    assert len(enhanced) == 2 and None not in positions and positions == sorted(positions)


def _write_copies(folder: Path, positions: list[float | None], instances: list[int], series: list[str]) -> list[Path]:
    """Copies of MR_small.dcm with the given z positions, instance numbers and series UIDs."""
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    paths = []
    for number, (z, instance, uid) in enumerate(zip(positions, instances, series)):
        ds = source.copy()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if z is None:
            ds.pop("ImagePositionPatient", None)
        else:
            ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber, ds.SeriesInstanceUID = instance, uid
        ds.PixelData = (source.pixel_array + number).astype(source.pixel_array.dtype).tobytes()
        paths.append(folder / f"file{number}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_dicom_series_are_grouped_by_uid_and_ordered_by_position(tmp_path: Path) -> None:
    # positions disagree with instance numbers and file names: position wins
    _write_copies(tmp_path, [30.0, -10.0, 10.0, 5.0], [1, 2, 3, 1], ["1.2.3", "1.2.3", "1.2.3", "9.9.9"])
    series = sorted((s for s in read_archive([tmp_path]) if isinstance(s, Series)), key=lambda s: s.n_slices)
    assert [s.series_id for s in series] == ["9.9.9", "1.2.3"]
    slices = series[1].load()
    assert [s.position for s in slices] == [-10.0, 10.0, 30.0]
    assert [Path(s.path).name for s in slices] == ["file1.dcm", "file2.dcm", "file0.dcm"]
    assert [s.index for s in slices] == [0, 1, 2] and series[1].files == [s.path for s in slices]


def test_a_localizer_in_a_series_is_skipped_with_its_reason_and_refused_as_a_query(tmp_path: Path) -> None:
    """A scout written into the series it planned is not a slice. Its ImageType has one value, which pydicom gives as a
    str (the corpus scouts above have three, a MultiValue)."""
    paths = _write_copies(tmp_path, [0.0, 5.0, 10.0], [1, 2, 3], ["1.2.3"] * 3)
    scout = pydicom.dcmread(paths[1])
    scout.ImageType = "LOCALIZER"
    scout.save_as(paths[1])
    items = list(iter_slices([tmp_path]))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [Path(i.path).name for i in skipped] == ["file1.dcm"] and "localizer" in skipped[0].reason
    assert sorted(Path(i.path).name for i in items if isinstance(i, Slice)) == ["file0.dcm", "file2.dcm"]
    with pytest.raises(ValueError, match="localizer"):
        read_path(paths[1])
    with pytest.raises(ValueError, match="localizer"):
        object_slices(scout)  # the Dataset path of `DistortionAwareMetric.embed`
    assert len(read_path(paths[0])) == 1  # the same file without the flag is a slice


def test_a_siemens_mosaic_is_split_into_its_slices_as_nibabel_splits_it(tmp_path: Path) -> None:
    """nibabel ships the header of a real Siemens fMRI mosaic (32 slices on a 6 × 6 grid of 64² tiles) without its
    pixels: the test gives it 32 different tiles, and the reader must return them in order, as nibabel's own
    MosaicWrapper unfolds them. nibabel's DTI mosaic `0.dcm` (48 slices in a 256² image: no 7 × 7 grid divides it) is
    refused with the reason, where it used to be read as one slice of 48 thumbnails."""
    ds = pydicom.dcmread(Path(nib.__file__).parent / "nicom" / "tests" / "data" / "csa_slice_norm.dcm")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 4000, size=(32, 64, 64)).astype(np.uint16)
    grid = np.zeros((36, 64, 64), np.uint16)
    grid[:32] = tiles
    ds.PixelData = grid.reshape(6, 6, 64, 64).swapaxes(1, 2).reshape(384, 384).tobytes()
    ds["PixelData"].VR = "OW"
    path = tmp_path / "mosaic.dcm"
    ds.save_as(path)
    slices = read_path(path)
    assert [s.pixels.shape for s in slices] == [(64, 64)] * 32 and all(s.spacing == (1.5, 1.5) for s in slices)
    np.testing.assert_array_equal(np.stack([s.pixels for s in slices]), tiles)
    from nibabel.nicom.dicomwrappers import wrapper_from_file

    np.testing.assert_array_equal(np.moveaxis(wrapper_from_file(path).get_data(), -1, 0), tiles)
    assert len(object_slices(pydicom.dcmread(path))) == 32  # the Dataset path of `DistortionAwareMetric.embed`
    with pytest.raises(ValueError, match="mosaic of 48 slices whose 256 × 256 image does not divide into a 7 × 7 grid"):
        read_path(Path(nibabel_data) / "0.dcm")


def test_dicom_without_positions_is_ordered_by_instance_number(tmp_path: Path) -> None:
    _write_copies(tmp_path, [None, None, None], [3, 1, 2], ["1.2.3"] * 3)
    (series,) = [s for s in read_archive([tmp_path]) if isinstance(s, Series)]
    assert [Path(s.path).name for s in series.load()] == ["file1.dcm", "file2.dcm", "file0.dcm"]


def test_series_pickle_and_load_later(tmp_path: Path) -> None:
    """Indexer workers receive Series in other processes: the loader must survive pickling."""
    (series,) = [s for s in read_archive([get_testdata_file("MR_small.dcm")]) if isinstance(s, Series)]
    copy = pickle.loads(pickle.dumps(series))
    np.testing.assert_array_equal(copy.load()[0].pixels, series.load()[0].pixels)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_nifti_is_reoriented_like_as_closest_canonical(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    # voxel axes → (−x, +z, −y) with spacings 0.7, 0.7, 12 mm: an oblique-ish thick-slice acquisition
    affine = np.array([[-0.7, 0, 0, 10], [0, 0, -12, 5], [0, 0.7, 0, -3], [0, 0, 0, 1]], dtype=float)
    path = _nifti(tmp_path / "101_C0.nii.gz", data, affine)
    canonical = nib.as_closest_canonical(nib.load(path))
    expected = np.asarray(canonical.dataobj)
    assert np.argmax(canonical.header.get_zooms()) == 1  # the 12 mm axis is canonical y
    slices = read_path(path)
    assert len(slices) == 4 and all(s.spacing == pytest.approx((0.7, 0.7)) for s in slices)
    for s in slices:
        np.testing.assert_array_equal(s.pixels, np.flip(expected[:, s.index, :]).T)
    positions = [s.position for s in slices]
    assert np.allclose(np.diff(positions), 12.0)
    assert slices[0].patient_id == "101" and slices[0].modality == "OT"


def test_slice_axis_rule() -> None:
    assert slice_axis((478, 482, 5), (0.73, 0.73, 12.0)) == 2
    assert slice_axis((5, 482, 478), (12.0, 0.73, 0.73)) == 0
    assert slice_axis((64, 64, 64), (1.0, 1.0, 1.0)) == 2  # ties → axial
    assert slice_axis((64, 64, 1), (1.0, 2.0, 0.5)) == 2  # a single-slice volume is cut along its one slice
    assert slice_axis((64, 64, 64), (1.0, 1.0, 1.0), axis=0) == 0
    with pytest.raises(ValueError):
        slice_axis((4, 4, 4), (1.0, 1.0, 1.0), axis=3)


def test_nifti_slice_axis_option(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "vol.nii", np.zeros((6, 5, 4), np.int16), np.eye(4))
    assert [s.n_slices for s in read_archive([path]) if isinstance(s, Series)] == [4]
    assert [s.n_slices for s in read_archive([path], slice_axis=0) if isinstance(s, Series)] == [6]


def test_nibabel_test_volumes() -> None:
    example = Path(nibabel_data) / "example4d.nii.gz"
    img = nib.load(example)
    series = [s for s in read_archive([example]) if isinstance(s, Series)]
    assert len(series) == img.shape[3] and series[0].series_id.endswith("#t0")
    assert all(len(s.load()) == s.n_slices for s in series)
    items = list(read_archive([Path(nibabel_data) / "analyze.hdr", Path(nibabel_data) / "row_major.dconn.nii"]))
    assert all(isinstance(i, Skipped) for i in items)
    assert "analyze.img is missing" in items[0].reason and "not a volume" in items[1].reason


@pytest.mark.parametrize("name", ["phantom_EPI_asc_CLEAR_2_1.PAR", "test.mgz", "tiny.mnc", "minc2_1_scale.mnc", "example4d+orig.HEAD"])
def test_the_other_volume_formats_nibabel_reads_are_cut_as_its_own_images(name: str) -> None:
    """Philips PAR/REC, FreeSurfer MGZ, MINC-1, MINC-2 (HDF5, through h5py) and AFNI files nibabel ships are read from a folder with the slices that
    `embed` cuts from nibabel's own image of them; PAR/REC is MR by its nature."""
    path = Path(nibabel_data) / name
    series = [s for s in read_archive([path]) if isinstance(s, Series)]
    read = [s for one in series for s in one.load()]
    image = nib.load(path)
    cut = object_slices(image)
    assert len(series) == (image.shape + (1,))[3] and len(read) == len(cut) > 0
    assert sum(float(s.pixels.sum(dtype=np.float64)) for s in read) == pytest.approx(float(image.get_fdata().sum()), rel=1e-5)  # every voxel, scaled as nibabel scales it
    for mine, theirs in zip(read, cut):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
        assert mine.spacing == theirs.spacing
    assert {s.modality for s in read} == {"MR" if name.endswith(".PAR") else "OT"}


def test_nibabel_formats_that_cannot_be_read_are_skipped_with_the_reason(tmp_path: Path) -> None:
    data = Path(nibabel_data)
    reasons = {Path(i.path).name: i.reason for i in read_archive([data / n for n in ("T1.PAR", "phantom_truncated.PAR", "minc1_4d.mnc")])}
    assert reasons["T1.PAR"] == "header of an image pair whose data file T1.REC is missing"
    assert "unreadable PAR/REC header: Header inconsistency" in reasons["phantom_truncated.PAR"]
    assert "only 2D and 3D MINC are read" in reasons["minc1_4d.mnc"]
    (tmp_path / "cut.mgz").write_bytes(gzip.compress(gzip.decompress((data / "test.mgz").read_bytes())[:300]))  # a whole gzip stream, short of voxels
    (cut,) = read_archive([tmp_path / "cut.mgz"])
    assert isinstance(cut, Skipped) and cut.reason == "truncated: the header needs 764 bytes, the gzip stream holds 300"


def test_two_d_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    deep = rng.integers(0, 60000, size=(12, 9), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pages = [Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    (colour,) = read_path(tmp_path / "colour.png")
    np.testing.assert_allclose(colour.pixels, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    (grey,) = read_path(tmp_path / "deep.png")
    np.testing.assert_array_equal(grey.pixels, deep.astype(np.float32))
    tiff = read_path(tmp_path / "pages.tif")
    assert [s.index for s in tiff] == [0, 1, 2]
    np.testing.assert_array_equal(tiff[2].pixels, np.asarray(pages[2], dtype=np.float32))
    assert colour.patient_id == tmp_path.name  # default rule: the folder holding the file


def test_bad_files_are_skipped_with_reasons_and_lose_nothing_else(tmp_path: Path, bad_files: dict[str, str]) -> None:
    expected = bad_files
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "good.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "dicom_named.png")  # content, not name, decides
    items = list(iter_slices([tmp_path]))
    skipped = {Path(i.path).name: i.reason for i in items if isinstance(i, Skipped)}
    assert set(skipped) == set(expected)
    for name, word in expected.items():
        assert word in skipped[name], (name, skipped[name])
    assert sorted(Path(i.path).name for i in items if isinstance(i, Slice)) == ["dicom_named.png", "good.dcm"]


def test_read_path_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_path(tmp_path / "missing.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not an image"):
        read_path(tmp_path / "notes.txt")


def test_identity_rules(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "relative_path,patient_id,modality\nstudy,site-A,MR\nstudy/special.dcm,site-B,\n", encoding="utf-8"
    )
    identity = Identity(manifest=manifest)
    assert identity.patient(tmp_path / "study" / "x.dcm", "HEADER") == "site-A"  # manifest wins over header
    assert identity.patient(tmp_path / "study" / "special.dcm", "HEADER") == "site-B"  # deepest entry wins
    assert identity.modality_of(tmp_path / "study" / "special.dcm", "CT") == "CT"  # empty manifest modality
    assert identity.modality_of(tmp_path / "study" / "x.dcm", "CT") == "MR"
    assert identity.patient(tmp_path / "other" / "x.dcm", "HEADER") == "HEADER"
    regex = Identity(patient_regex=r"case_(\d+)", modality="ct")
    assert regex.patient(Path("/data/case_007/img.png")) == "007"
    assert regex.patient(Path("/data/ab/img.png")) == "ab"  # no match → default rule
    assert regex.modality_of(Path("x.png")) == "CT" and regex.modality_of(Path("x.dcm"), "PT") == "OT"
    assert Identity().patient(Path("/data/myops/101_C0.nii.gz")) == "101"
    assert Identity().patient(Path("/data/patient01/study1_FLAIR.nii.gz")) == "patient01"
    with pytest.raises(ValueError, match="patient regex"):
        Identity(patient_regex="(")
    with pytest.raises(FileNotFoundError):
        Identity(manifest=tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("path,id\nx,y\n")
    with pytest.raises(ValueError, match="missing column"):
        Identity(manifest=tmp_path / "bad.csv")


@pytest.mark.parametrize("row", ["../../x", "/", "/etc", "study/../../x"])
def test_manifest_rows_outside_its_folder_are_refused_with_the_line(tmp_path: Path, row: str) -> None:
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"relative_path,patient_id\nstudy,A\n{row},B\n")
    with pytest.raises(ValueError, match=rf"line 3: relative_path '{row}' is outside the manifest's folder"):
        Identity(manifest=manifest)


def test_manifest_rows_through_a_symlinked_folder_inside_it_are_kept(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "m" / "manifest.csv").write_text("relative_path,patient_id\nlinked,A\n.,ALL\n")
    identity = Identity(manifest=tmp_path / "m" / "manifest.csv")
    assert identity.patient(tmp_path / "m" / "linked" / "x.dcm", "HEADER") == "A"
    assert identity.patient(tmp_path / "m" / "y.dcm", "HEADER") == "ALL"  # "." names the manifest's own folder
    assert identity.patient(tmp_path / "z.dcm", "HEADER") == "HEADER"


def test_monochrome1_is_negated_so_higher_is_brighter(tmp_path: Path) -> None:
    """A real MONOCHROME1 radiograph (pydicom-data): its slice is minus the rescaled stored values; as MONOCHROME2, not."""
    path = get_testdata_file("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    rescaled = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    (mono1,) = read_path(path)
    np.testing.assert_array_equal(mono1.pixels, -rescaled)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "mono2.dcm")
    (mono2,) = read_path(tmp_path / "mono2.dcm")
    np.testing.assert_array_equal(mono2.pixels, rescaled)
    assert mono1.pixels[ds.pixel_array == ds.pixel_array.max()].max() == mono1.pixels.min()  # the stored maximum is the darkest


def test_archive_slices_match_the_manifest(archive: Path) -> None:
    """With the manifest, every source yields exactly its manifest n_slices, in index order, of the header's shape."""
    import csv

    expected: dict[str, int] = {}
    for row in csv.DictReader((archive / "manifest.csv").open()):
        expected[row["patient_id"]] = expected.get(row["patient_id"], 0) + int(row["n_slices"])
    counted: dict[str, int] = {}
    problems = []
    for item in read_archive([archive], Identity(manifest=archive / "manifest.csv")):
        if isinstance(item, Skipped):
            problems.append(item)
            continue
        slices = item.load()
        assert not item.skipped and [s.index for s in slices] == list(range(item.n_slices))
        assert all(s.pixels.shape == item.shape and np.isfinite(s.pixels).all() for s in slices)
        counted[item.patient_id] = counted.get(item.patient_id, 0) + len(slices)
    assert counted == expected
    assert {Path(p.path).suffix for p in problems} <= {".csv", ".md"}  # only the archive's own documents


@pytest.mark.parametrize("folder, spacing", [("ct/udacity_ct", 7.5), ("ct/ircadb", 4.8)])  # the data README's figures
def test_archive_dicom_series_are_ordered_along_the_body(archive: Path, folder: str, spacing: float) -> None:
    (series,) = [s for s in read_archive([archive / folder]) if isinstance(s, Series)]
    steps = np.diff([s.position for s in series.load()])
    assert np.all(steps > 0) and np.median(steps) == pytest.approx(spacing, abs=0.05)
