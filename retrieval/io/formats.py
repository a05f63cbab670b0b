"""Tell a file's format from its first bytes (not its name), with a clear reason when it is none we read."""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

DICOM, NIFTI, IMAGE = "dicom", "nifti", "image"
ITK = "itk"  # NRRD and MetaImage volumes, read through SimpleITK
NIBABEL = "nibabel"  # the other volume formats nibabel reads: Philips PAR/REC, FreeSurfer MGH/MGZ, MINC-1/2, AFNI
_PAR_MAGIC = b"# === DATA DESCRIPTION FILE"
_MINC_MAGIC = (b"CDF\x01", b"CDF\x02", b"\x89HDF\r\n\x1a\n")  # MINC-1 is netCDF, MINC-2 is HDF5
_MGH_VERSION = b"\x00\x00\x00\x01"  # an MGH header starts with version 1 (big-endian int32)
_AFNI_HEADER = re.compile(rb"\s*type\s*=\s*(string|integer|float)-attribute")
_NAMES = "DICOM, NIfTI, NRRD, MetaImage, PAR/REC, MGH, MINC, AFNI, PNG, JPEG or TIFF"
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
_NIFTI_NAMES = (".nii", ".nii.gz", ".hdr")
_CLAIMS = {
    ".dcm": "DICOM", ".dicom": "DICOM", ".ima": "DICOM", ".nii": "NIfTI", ".gz": "NIfTI (gzip)",
    ".hdr": "NIfTI/Analyze header", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
    ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage", ".par": "a PAR/REC header",
    ".mgh": "MGH", ".mgz": "MGH (gzip)", ".mnc": "MINC", ".head": "an AFNI header",
}
# NRRD magic (any version), or the first key of a MetaImage text header.
_ITK_HEADER = re.compile(rb"NRRD000\d|\s*(ObjectType|NDims|ObjectSubType|Comment)\s*=")
# First group of a DICOM file without its 128-byte preamble: file meta (0002) or identifying (0008) elements.
_BARE_DICOM_GROUPS = {0x0002, 0x0008}


class Unsupported(Exception):
    """The file is not in a format we read; the message is the one-line reason."""


def _nifti_magic(header: bytes) -> bool:
    """True for a NIfTI-1 (single file or pair), NIfTI-2 or Analyze 7.5 header."""
    if header[344:348] in (b"n+1\x00", b"ni1\x00") or header[4:8] in (b"n+2\x00", b"ni2\x00"):
        return True
    return len(header) >= 348 and 348 in (struct.unpack("<i", header[:4])[0], struct.unpack(">i", header[:4])[0])


def _gunzip_head(path: Path, size: int) -> bytes:
    """The first `size` decompressed bytes of a gzip file (raises Unsupported when it is corrupt)."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise Unsupported(f"corrupt or truncated gzip stream: {exc}") from None


def sniff(path: Path) -> str:
    """Return DICOM, NIFTI, ITK, NIBABEL or IMAGE for a readable file, judged by its content; raise Unsupported otherwise."""
    try:
        with path.open("rb") as handle:
            head = handle.read(540)
    except OSError as exc:
        raise Unsupported(f"cannot open: {exc.strerror or exc}") from None
    name = path.name.lower()
    if not head:
        raise Unsupported("empty file (0 bytes)")
    if head[128:132] == b"DICM":
        return DICOM
    if head.startswith(_IMAGE_MAGIC):
        return IMAGE
    if _ITK_HEADER.match(head):
        return ITK
    if _nibabel_only(name, head):
        return NIBABEL
    if head.startswith(b"\x1f\x8b"):
        if name.endswith(".nii.gz") and _nifti_magic(_gunzip_head(path, 540)):
            return NIFTI
        if name.endswith(".mgz") and _gunzip_head(path, 4) == _MGH_VERSION:
            return NIBABEL
        raise Unsupported("gzip file that is not a .nii.gz NIfTI or .mgz MGH volume")
    if name.endswith(_NIFTI_NAMES) and _nifti_magic(head):
        return NIFTI
    if len(head) >= 8:
        for endian in "<>":
            group, element = struct.unpack(endian + "HH", head[:4])
            if group in _BARE_DICOM_GROUPS and element < 0x0100:
                return DICOM
    suffix = ".gz" if name.endswith(".gz") else path.suffix.lower()
    if suffix in _CLAIMS:
        raise Unsupported(f"named {suffix} but the content is not {_CLAIMS[suffix]}")
    kind = f"a {suffix} file" if suffix else "a file without extension"
    raise Unsupported(f"not an image: {kind} whose content is not {_NAMES}")


def _nibabel_only(name: str, head: bytes) -> bool:
    """True for the first bytes of a volume only nibabel reads here (its name tells MINC, MGH and AFNI headers from
    other netCDF, HDF5 and text files)."""
    if head.startswith(_PAR_MAGIC):
        return True
    if name.endswith(".mnc"):
        return head.startswith(_MINC_MAGIC)
    if name.endswith(".mgh"):
        return head.startswith(_MGH_VERSION)
    return name.endswith(".head") and bool(_AFNI_HEADER.match(head))
