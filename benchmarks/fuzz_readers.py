"""Fuzz the DICOM, NIfTI and image readers with atheris (libFuzzer) for a fixed budget; count inputs and crashes.

Run: nice -n 15 python benchmarks/fuzz_readers.py [--seconds 240] [--out /tmp/fuzz]
Seeds: pydicom's and pydicom-data's test files, nibabel's test volumes (cropped to a few KiB with their headers
kept; its MGZ and MINC files), a Siemens mosaic on nibabel's real CSA header, small PNG/JPEG/TIFF files and the
hostile corpus (retrieval/io/hostile.py). The first input byte picks
the file kind (.dcm, .nii, .nii.gz and .mgz gzipped by the harness so mutations reach the header, .png, .jpg, .tif,
.nrrd, .mnc).
Every input must be read or skipped with a reason (`hostile.read_or_skip`): an escaped exception is a crash,
so is an input over the per-input time limit (libFuzzer -timeout) or the memory limit (-rss_limit_mb). The
readers run under tight limits, so memory beyond them means a cost the header check missed. After a crash the
fuzzer restarts on the grown corpus until the budget is spent; crash inputs are kept under --out/crashes.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, whatever the install points at
KINDS = (".dcm", ".nii", ".nii.gz", ".png", ".jpg", ".tif", ".nrrd", ".mgz", ".mnc")  # the first input byte picks one
MAX_LEN = 65536
LIMITS = {"max_slice_pixels": 2048 * 2048, "max_slices_per_file": 512, "max_file_mb": 128}


def _seed_files() -> list[tuple[int, bytes]]:
    """(kind, content) seeds: real test files of pydicom, pydicom-data and nibabel, small images, hostile files."""
    import tempfile

    import nibabel as nib
    import numpy as np
    import pydicom
    from PIL import Image

    import SimpleITK as sitk

    from retrieval.io.hostile import SHAPES, build

    seeds: list[tuple[int, bytes]] = []
    dicom_dirs = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # pydicom-data

        dicom_dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    for folder in dicom_dirs:
        for name in sorted(glob.glob(str(folder / "**" / "*"), recursive=True)):
            if os.path.isfile(name) and os.path.getsize(name) < MAX_LEN and not name.endswith((".py", ".txt", ".json", ".gz", ".bz2", ".zip")):
                seeds.append((0, Path(name).read_bytes()))
    nib_data = Path(nib.__file__).parent / "tests" / "data"
    for name in sorted(glob.glob(str(nib_data / "*.nii*"))):
        try:
            img = nib.load(name)
            crop = np.asanyarray(img.dataobj[tuple(slice(0, 12) for _ in img.shape[:3])])
            small = type(img)(crop, img.affine, img.header)
            seeds.append((1, small.to_bytes()))
            seeds.append((2, small.to_bytes()))
        except Exception:  # noqa: BLE001 - CIFTI and other non-volume files stay out of the seeds
            continue
    for header in ("nifti1.hdr", "nifti2.hdr"):
        seeds.append((1, (nib_data / header).read_bytes()))
    seeds.append((7, gzip.decompress((nib_data / "test.mgz").read_bytes())))  # MGH: the harness gzips .mgz inputs
    mosaic = pydicom.dcmread(nib_data.parent.parent / "nicom" / "tests" / "data" / "csa_slice_norm.dcm")  # a real Siemens CSA header
    mosaic.Rows = mosaic.Columns = 48  # its 32 slices on a 6 × 6 grid of 8² tiles
    mosaic.PixelData = np.arange(48 * 48, dtype=np.uint16).tobytes()
    mosaic["PixelData"].VR = "OW"
    with tempfile.TemporaryDirectory() as tmp:
        mosaic.save_as(Path(tmp) / "mosaic.dcm")
        seeds.append((0, (Path(tmp) / "mosaic.dcm").read_bytes()))
    seeds += [(8, Path(name).read_bytes()) for name in sorted(glob.glob(str(nib_data / "*.mnc")))]  # MINC-1 (netCDF) and -2 (HDF5)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, name, array, options in ((3, "grey.png", rng.integers(0, 256, (16, 12), np.uint8), {}),
                                           (3, "deep.png", rng.integers(0, 60000, (9, 7), np.uint16), {}),
                                           (4, "photo.jpg", rng.integers(0, 256, (16, 16, 3), np.uint8), {}),
                                           (5, "pages.tif", rng.integers(0, 256, (8, 8), np.uint8), {"save_all": True})):
            image = Image.fromarray(array)
            extra = {"append_images": [image, image]} if options.get("save_all") else {}
            image.save(Path(tmp) / name, **options, **extra)
            seeds.append((kind, (Path(tmp) / name).read_bytes()))
        volume = nib.Nifti1Image(rng.integers(0, 4096, (12, 10, 8), np.int16), np.diag([0.8, 0.9, 2.5, 1]))
        nib.save(volume, Path(tmp) / "volume.nii")  # and as NRRD, raw and gzip-encoded, as SimpleITK writes it
        for compress in (False, True):
            sitk.WriteImage(sitk.ReadImage(str(Path(tmp) / "volume.nii")), str(Path(tmp) / "volume.nrrd"), useCompression=compress)
            seeds.append((6, (Path(tmp) / "volume.nrrd").read_bytes()))
        build(Path(tmp), [n for n in SHAPES if not n.startswith("tiff")])
        for name in sorted(os.listdir(tmp)):
            if name in SHAPES:
                raw = (Path(tmp) / name).read_bytes()
                kind = next(i for i, suffix in reversed(list(enumerate(KINDS))) if name.endswith(suffix))
                seeds.append((kind, gzip.decompress(raw) if name.endswith("gz") else raw))  # .nii.gz and .mgz: the harness gzips them
    return [(kind, data) for kind, data in seeds if len(data) < MAX_LEN]


def _worker(argv: list[str]) -> None:
    """One libFuzzer process: import and warm up the readers instrumented (codecs load lazily), then fuzz."""
    import atheris
    import PIL._binary  # noqa: F401 - loaded uninstrumented: atheris 3.0 cannot rewrite its o8() on Python 3.11

    work = Path(os.environ["FUZZ_WORK"])
    with atheris.instrument_imports(include=["pydicom", "nibabel", "PIL", "retrieval"]):
        from retrieval.io.hostile import read_or_skip
        from retrieval.io.limits import Limits

        limits = Limits(**LIMITS)

        def one_input(data: bytes) -> None:
            if len(data) < 2:
                return
            suffix = KINDS[data[0] % len(KINDS)]
            path = work / f"input{suffix}"
            path.write_bytes(gzip.compress(data[1:], 1) if suffix.endswith("gz") else data[1:])
            read_or_skip(path, limits)

        for seed in sorted(Path(argv[-1]).glob("seed-*"))[::10]:  # a sample of each kind loads the lazily imported codecs
            one_input(seed.read_bytes())
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=240, help="total fuzzing budget")
    parser.add_argument("--timeout", type=int, default=5, help="per-input time limit (s)")
    parser.add_argument("--rss-mb", type=int, default=1024, help="memory limit of a fuzzing process (MiB)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fuzz_readers"))
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker([sys.argv[0], *args.worker])
        return
    corpus, crashes, work = args.out / "corpus", args.out / "crashes", Path("/dev/shm" if os.path.isdir("/dev/shm") else args.out) / f"fuzz-{os.getpid()}"
    for folder in (corpus, crashes, work):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = _seed_files()
    for number, (kind, data) in enumerate(seeds):
        (corpus / f"seed-{number:04d}").write_bytes(bytes([kind]) + data)
    started, runs, found = time.monotonic(), 0, []
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    while (left := args.seconds - (time.monotonic() - started)) > 5:
        command = [sys.executable, __file__, "--worker", f"-max_total_time={int(left)}", f"-timeout={args.timeout}",
                   f"-rss_limit_mb={args.rss_mb}", f"-max_len={MAX_LEN}", "-print_final_stats=1", f"-artifact_prefix={crashes}/", str(corpus)]
        done = subprocess.run(command, env={**os.environ, "FUZZ_WORK": str(work)}, capture_output=True, text=True)
        log = done.stdout + done.stderr
        (args.out / f"log-{len(list(args.out.glob('log-*')))}.txt").write_text(log)
        runs += sum(int(n) for n in re.findall(r"stat::number_of_executed_units: (\d+)", log))
        artefacts = re.findall(r"Test unit written to (\S+)", log)
        if done.returncode != 0 and not artefacts:
            sys.exit(f"fuzzer failed without a crash input:\n{log[-3000:]}")
        for artefact in artefacts:
            cause = re.search(r"(Uncaught Python exception.*?\n.*?\n|ERROR: libFuzzer: \S+)", log, re.S)
            found.append((artefact, (cause.group(0) if cause else "?").strip().splitlines()[-1]))
            print(f"crash: {artefact}: {found[-1][1]}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu
    print(f"{len(seeds)} seeds, {runs} inputs in {time.monotonic() - started:.0f} s ({cpu:.0f} s of CPU), {len(found)} crashes; "
          f"corpus {len(os.listdir(corpus))} inputs")
    for artefact, cause in found:
        print(f"  {artefact}: {cause}")


if __name__ == "__main__":
    main()
