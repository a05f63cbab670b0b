"""NRRD and MetaImage: real NIfTI volumes saved in those formats give exactly the slices of the NIfTI file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from nibabel.testing import data_path

from retrieval.io import Identity, Series, Skipped, read_archive, read_path
from retrieval.io.itk import simpleitk

sitk = simpleitk()

NIBABEL = Path(data_path)
# RAS and LAS grids, thick slices along the third axis, anisotropic voxels, and a 4D file.
VOLUMES = ["anatomical.nii", "reoriented_anat_moved.nii", "resampled_anat_moved.nii", "standard.nii.gz", "example4d.nii.gz"]
LPS = np.diag([-1.0, -1.0, 1.0])


def _voxels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (i, j, k[, t]) and RAS+ affine of a NIfTI file, as nibabel reads them."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    return data.astype(data.dtype.newbyteorder("=")), img.affine  # SimpleITK takes native byte order only


def write_nrrd(source: Path, target: Path, space: str, detached: bool = False) -> None:
    """Save a NIfTI volume as NRRD with pynrrd, in RAS or LPS world space (3D Slicer writes LPS); 4D as a list axis."""
    data, affine = _voxels(source)
    flip = np.eye(3) if space == "right-anterior-superior" else LPS
    directions = (flip @ affine[:3, :3]).T
    header = {"space": space, "space origin": flip @ affine[:3, 3], "kinds": ["domain"] * 3 + (["list"] if data.ndim == 4 else [])}
    header["space directions"] = np.vstack([directions, np.full(3, np.nan)]) if data.ndim == 4 else directions
    if detached:
        header["encoding"] = "gzip"
    nrrd.write(str(target), data, header, detached_header=detached)


def write_metaimage(source: Path, target: Path) -> None:
    """Save a NIfTI volume as MetaImage with SimpleITK's writer (LPS origin and direction cosines; 4D as NDims = 4)."""
    data, affine = _voxels(source)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)  # ITK arrays are (t, k, j, i)
    direction = np.eye(data.ndim)
    direction[:3, :3] = LPS @ affine[:3, :3] / spacing
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing(list(spacing) + [1.0] * (data.ndim - 3))
    image.SetOrigin(list(LPS @ affine[:3, 3]) + [0.0] * (data.ndim - 3))
    sitk.WriteImage(image, str(target))


def assert_same_slices(converted: Path, original: Path, identity: Identity) -> None:
    """Every slice of the converted file equals the NIfTI slice: pixels, spacing, position, order and count."""
    expected, found = read_path(original, identity), read_path(converted, identity)
    assert len(found) == len(expected) > 1
    for a, b in zip(found, expected):
        assert a.index == b.index and a.pixels.shape == b.pixels.shape
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
        assert a.position == pytest.approx(b.position, abs=1e-3)
        assert a.series_id.removeprefix(str(converted)) == b.series_id.removeprefix(str(original))


@pytest.mark.parametrize("name", VOLUMES)
@pytest.mark.parametrize("fmt", ["nrrd-ras", "nrrd-lps", "nhdr", "mha", "mhd"])
def test_nibabel_volumes_in_nrrd_and_metaimage_give_the_nifti_slices(tmp_path, name, fmt) -> None:
    source = NIBABEL / name
    target = tmp_path / (name.split(".")[0] + "." + fmt.split("-")[0])
    if fmt.startswith("nrrd") or fmt == "nhdr":
        write_nrrd(source, target, "left-posterior-superior" if fmt != "nrrd-ras" else "right-anterior-superior", detached=fmt == "nhdr")
    else:
        write_metaimage(source, target)
    assert_same_slices(target, source, Identity(modality="MR"))


def test_an_oblique_cardiac_volume_is_cut_along_its_thick_slices(archive, tmp_path) -> None:
    source = archive / "mr/myops/101_C0.nii.gz"  # oblique short axis, 5 slices far apart
    write_nrrd(source, tmp_path / "101_C0.nrrd", "left-posterior-superior")
    write_metaimage(source, tmp_path / "101_C0.mha")
    identity = Identity(modality="MR")
    for converted in ("101_C0.nrrd", "101_C0.mha"):
        assert_same_slices(tmp_path / converted, source, identity)
    assert len(read_path(tmp_path / "101_C0.nrrd", identity)) == 5


def test_detached_data_files_are_read_with_their_header_and_never_listed_as_skipped(tmp_path) -> None:
    write_nrrd(NIBABEL / "anatomical.nii", tmp_path / "scan.nhdr", "left-posterior-superior", detached=True)
    write_metaimage(NIBABEL / "standard.nii.gz", tmp_path / "other.mhd")
    data_files = sorted(p.name for p in tmp_path.iterdir() if p.suffix not in (".nhdr", ".mhd"))
    assert data_files == ["other.raw", "scan.raw.gz"]
    items = list(read_archive([tmp_path], Identity(modality="MR")))
    assert not [i for i in items if isinstance(i, Skipped)]
    series = {Path(s.path).name: s for s in items if isinstance(s, Series)}
    assert set(series) == {"scan.nhdr", "other.mhd"}
    assert [Path(f).name for f in series["scan.nhdr"].files] == ["scan.nhdr", "scan.raw.gz"], "the data file is part of the fingerprint"


def test_format_is_told_by_content_and_bad_files_get_one_line_reasons(tmp_path) -> None:
    write_nrrd(NIBABEL / "anatomical.nii", tmp_path / "volume.dat", "left-posterior-superior")  # an NRRD under another name
    (tmp_path / "cut.nrrd").write_bytes((tmp_path / "volume.dat").read_bytes()[:2000])
    (tmp_path / "notes.mha").write_text("not an image\n")
    (tmp_path / "broken.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4\nElementDataFile = missing.raw\n")
    items = {Path(i.path).name: i for i in read_archive([tmp_path], Identity(modality="MR"))}
    assert isinstance(items["volume.dat"], Series) and items["volume.dat"].n_slices == 25
    assert items["notes.mha"].reason == "named .mha but the content is not MetaImage"
    assert "MetaImage header" in items["broken.mhd"].reason and "\n" not in items["broken.mhd"].reason
    loaded = items["cut.nrrd"].load() if isinstance(items["cut.nrrd"], Series) else None
    problems = items["cut.nrrd"].skipped if loaded is not None else [items["cut.nrrd"]]
    assert loaded == [] and len(problems) == 1 and "NRRD" in problems[0].reason and "\n" not in problems[0].reason


@pytest.mark.parametrize("first", ["faiss", "SimpleITK"])
def test_reading_nrrd_leaves_faiss_working_whichever_is_imported_first(tmp_path, first) -> None:
    # SWIG modules share a type table: SimpleITK loaded after faiss used to take over faiss's id vectors.
    import subprocess
    import sys

    write_nrrd(NIBABEL / "anatomical.nii", tmp_path / "scan.nrrd", "left-posterior-superior")
    script = f"""
import numpy as np
if {first!r} == "SimpleITK":
    from retrieval.io.itk import simpleitk; simpleitk()
import faiss
from retrieval.io import read_path
assert len(read_path({str(tmp_path / "scan.nrrd")!r})) == 25
index = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
index.add_with_ids(np.eye(4, dtype="float32")[:3], np.array([5, 6, 7]))
assert faiss.vector_to_array(index.id_map).tolist() == [5, 6, 7]
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
