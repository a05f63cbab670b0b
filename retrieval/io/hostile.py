"""Hostile files: small files whose headers declare huge or endless work, built on the spot from real test files.

Used by the hostile-file tests, `benchmarks/bench_hostile.py` and the fuzzer's regression tests: each file must be
skipped with a reason, quickly and in little memory. Built from pydicom's own test files (shipped with pydicom)
and headers written by nibabel and by hand, so nothing binary is committed.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np


def _dicom(name: str, folder: Path, source: str, syntax: str | None = None, **attributes: object) -> None:
    """A copy of a pydicom test file with some header attributes changed (and optionally re-encoded)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(source))
    for key, value in attributes.items():
        setattr(ds, key, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(folder / name, enforce_file_format=True)


def _rle_overrun(name: str, folder: Path) -> None:
    """pydicom's RLE MR with a frame whose runs decode past the frame's end (a panic in pylibjpeg-rle, a BaseException)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate

    runs = b"\x81\x00" * 40  # 40 replicate runs of 128 bytes: 5,120 bytes into a 4,096-byte segment
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.PixelData = encapsulate([struct.pack("<16I", 2, 64, 64 + len(runs), *[0] * 13) + runs + runs])
    ds.save_as(folder / name, enforce_file_format=True)


def _jp2_zero_box(name: str, folder: Path) -> None:
    """pydicom's JP2-wrapped JPEG 2000 test file with its first box after the signature (ftyp) given length 0."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_fragments

    ds = pydicom.dcmread(get_testdata_file("GDCMJ2K_TextGBR.dcm"))
    (frame,) = [f for f in generate_fragments(ds.PixelData) if f]
    ds.PixelData = encapsulate([frame[:12] + b"\0\0\0\0" + frame[16:]])
    ds.save_as(folder / name, enforce_file_format=True)


def _nifti(name: str, folder: Path, shape: tuple[int, ...], dtype: type, version: int = 1, data: bytes = b"") -> None:
    """A NIfTI header declaring `shape` and `dtype`, followed by `data` (nothing by default), gzipped for .gz names."""
    import nibabel as nib

    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    raw = header.binaryblock + b"\0" * 4 + data
    (folder / name).write_bytes(gzip.compress(raw, 9) if name.endswith(".gz") else raw)


def _mgh(name: str, folder: Path, shape: tuple[int, ...]) -> None:
    """A gzipped FreeSurfer MGH header declaring float32 voxels of `shape`, and none of them."""
    import nibabel as nib

    header = nib.freesurfer.mghformat.MGHHeader()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    (folder / name).write_bytes(gzip.compress(header.binaryblock, 9))


def _nrrd(name: str, folder: Path, sizes: str) -> None:
    """A gzip-encoded float NRRD written by SimpleITK (8×9×10 zeros) whose header is edited to declare `sizes`."""
    import re

    from retrieval.io.itk import simpleitk

    sitk = simpleitk()  # with its own SWIG type table, so faiss keeps working in this process

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9, 10), np.float32)), str(folder / name), useCompression=True)
    head, body = (folder / name).read_bytes().split(b"\n\n", 1)
    (folder / name).write_bytes(re.sub(rb"sizes: .*", b"sizes: " + sizes.encode(), head) + b"\n\n" + body)


def _png(name: str, folder: Path, width: int, height: int) -> None:
    """A PNG whose header declares width × height grey pixels, with one tiny IDAT chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _tiff_chain(name: str, folder: Path, pages: int, sizes: dict[int, tuple[int, int]] | None = None, junk_tags: int = 0) -> None:
    """A TIFF of `pages` pages, 1×1 unless `sizes` says (page → rows, cols): a chain of minimal IFDs sharing one pixel byte.

    `junk_tags` unknown tags come first in every IFD (out of order, as a hostile file may put them)."""
    body = bytearray(b"II*\x00" + struct.pack("<I", 9) + b"\x80")  # header, then the shared pixel byte at offset 8
    for page in range(pages):
        rows, cols = (sizes or {}).get(page, (1, 1))
        tags = [(1000 + i, 3, 0) for i in range(junk_tags)] + [
            (256, 4, cols), (257, 4, rows), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 4, rows), (279, 4, 1)]
        body += struct.pack("<H", len(tags))
        for tag, kind, value in tags:
            body += struct.pack("<HHII", tag, kind, 1, value)
        body += struct.pack("<I", len(body) + 4 if page + 1 < pages else 0)
    (folder / name).write_bytes(bytes(body))


def _jpeg(name: str, folder: Path, width: int, height: int) -> None:
    """A baseline JPEG of a tiny image with its frame header (SOF0) rewritten to declare width × height."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    (folder / name).write_bytes(bytes(data))


_RLE = "1.2.840.10008.1.2.5"
_DEFLATED = "1.2.840.10008.1.2.1.99"
SHAPES: dict[str, tuple[Callable[[str, Path], None], str]] = {
    # name: (builder, a phrase the reason must contain)
    "rle_30M_frames.dcm": (lambda n, f: _dicom(n, f, "MR_small_RLE.dcm", NumberOfFrames=30_000_000), "--max-slices-per-file"),
    "rle_65535x65535.dcm": (lambda n, f: _dicom(n, f, "MR_small_RLE.dcm", Rows=65535, Columns=65535), "--max-slice-pixels"),
    "rle_4096_frames.dcm": (lambda n, f: _dicom(n, f, "MR_small_RLE.dcm", NumberOfFrames=4096), "as RLE"),
    "native_30M_frames.dcm": (lambda n, f: _dicom(n, f, "CT_small.dcm", NumberOfFrames=30_000_000), "--max-slices-per-file"),
    "native_4096_frames.dcm": (lambda n, f: _dicom(n, f, "CT_small.dcm", NumberOfFrames=4096), "image attributes need"),
    "j2k_9999_frames.dcm": (lambda n, f: _dicom(n, f, "JPEG2000.dcm", NumberOfFrames=9999, Rows=64, Columns=64), "encapsulated frames"),
    "j2k_8192_frames_of_8192.dcm": (lambda n, f: _dicom(n, f, "JPEG2000.dcm", NumberOfFrames=8192, Rows=8192, Columns=8192), "--max-file-mb"),
    "deflated_9999_frames.dcm": (lambda n, f: _dicom(n, f, "CT_small.dcm", _DEFLATED, NumberOfFrames=9999), "deflated"),
    "cube_1024_float32.nii.gz": (lambda n, f: _nifti(n, f, (1024, 1024, 1024), np.float32), "--max-file-mb"),
    "volumes_32767.nii.gz": (lambda n, f: _nifti(n, f, (64, 64, 1, 32767), np.uint8), "--max-slices-per-file"),
    "volumes_4000_of_1.nii.gz": (lambda n, f: _nifti(n, f, (16, 16, 1, 4000), np.uint8), "gzip"),
    "cube_512_float32.nii.gz": (lambda n, f: _nifti(n, f, (512, 512, 512), np.float32), "gzip-compressed"),
    "nifti2_100000x100000.nii": (lambda n, f: _nifti(n, f, (100_000, 100_000, 1), np.uint8, version=2), "--max-slice-pixels"),
    "nifti_512_cube_empty.nii": (lambda n, f: _nifti(n, f, (512, 512, 512), np.int16), "truncated"),
    "mgz_100000x100000.mgz": (lambda n, f: _mgh(n, f, (100_000, 100_000, 1)), "--max-slice-pixels"),
    "mgz_512_cube_float32.mgz": (lambda n, f: _mgh(n, f, (512, 512, 512)), "gzip-compressed"),
    "nrrd_1024_cube_float.nrrd": (lambda n, f: _nrrd(n, f, "1024 1024 1024"), "--max-file-mb"),
    "nrrd_512_cube_float_gzip.nrrd": (lambda n, f: _nrrd(n, f, "512 512 512"), "deflate-compressed"),
    "png_100000x100000.png": (lambda n, f: _png(n, f, 100_000, 100_000), "pixels"),
    "png_10000x10000.png": (lambda n, f: _png(n, f, 10_000, 10_000), "--max-slice-pixels"),
    "jpeg_65500x65500.jpg": (lambda n, f: _jpeg(n, f, 65_500, 65_500), "pixels"),
    "tiff_10001_pages.tif": (lambda n, f: _tiff_chain(n, f, 10_001), "--max-slices-per-file"),
    # found by benchmarks/fuzz_readers.py: a later TIFF page far larger than the first (16,777,224 × 8 took 1.4 s and 0.7 GB)
    "tiff_page_1_of_16777224x8.tif": (lambda n, f: _tiff_chain(n, f, 3, {1: (16_777_224, 8)}), "--max-slice-pixels"),
    "rle_segment_overrun.dcm": (_rle_overrun, "decoder failed on corrupt data"),  # found by the fuzzer: escaped as a panic
    "jp2_zero_length_box.dcm": (_jp2_zero_box, "zero-length JP2 box"),  # found by the fuzzer: pydicom's box walk never ended
    "tiff_page_1_size_tags_late.tif": (lambda n, f: _tiff_chain(n, f, 2, {1: (16_777_224, 8)}, junk_tags=20), "page 1 of 16777224×8"),
    # found by the fuzzer: ITK's NRRD reader segfaults formatting its error about a long malformed header line
    "nrrd_long_sizes_line.nrrd": (lambda n, f: _nrrd(n, f, "x" * 2000), "header line 7 is 2,007 bytes long"),
}


def build(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """Write the hostile files (all, or `names`) into `folder`; return file name → a phrase its skip reason contains."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = names or list(SHAPES)
    for name in chosen:
        SHAPES[name][0](name, folder)
    return {name: SHAPES[name][1] for name in chosen}


def read_or_skip(path: Path, limits: object = None) -> list[str]:
    """Read a file the way `scan` does (headers, then every series' pixels); one line per outcome.

    The readers' contract: every file is read or skipped with a reason, and nothing raises. A broken contract
    raises here (an escaped exception, an outcome of the wrong type, an empty reason), so a fuzzer sees it.
    """
    from retrieval.io.archive import read_archive
    from retrieval.io.slices import Series, Skipped, Slice

    lines = []
    for item in read_archive([path], limits=limits):  # type: ignore[arg-type]
        items = [item] if isinstance(item, Skipped) else item.loader() if isinstance(item, Series) else [item]
        for one in items:
            if isinstance(one, Skipped) and one.reason.strip():
                lines.append(f"skipped: {one.reason}")
            elif isinstance(one, Slice) and one.pixels.ndim == 2 and one.pixels.dtype == np.float32:
                lines.append(f"slice {one.index}: {one.pixels.shape[0]}×{one.pixels.shape[1]}")
            else:
                raise AssertionError(f"{path}: the reader returned {one!r}, neither a 2D float32 Slice nor a Skipped with a reason")
    return lines
