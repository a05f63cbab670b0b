"""Reader processes: a file that crashes a C library or never returns costs that file, not the scan, index or server.

The crash is real: SimpleITK's NRRD reader segfaults on a long malformed header line (the fuzzer's find; the product's
own reader refuses that file before ITK sees it, so the library is called directly here). The hang is a real C call
that does not return (`time.sleep`), and the killed reader of the scan test is a real process killed from outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK
from pydicom.data import get_testdata_file

from retrieval.io import Identity, read_path
from retrieval.io.hostile import build
from retrieval.io.sandbox import ReaderCrashed, Sandbox
from retrieval.scan import scan_archive


@pytest.fixture(scope="module")
def crasher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The NRRD header that segfaults ITK."""
    folder = tmp_path_factory.mktemp("crasher")
    build(folder, ["nrrd_long_sizes_line.nrrd"])
    return folder / "nrrd_long_sizes_line.nrrd"


def test_a_crash_or_a_hang_costs_one_call_and_a_fresh_reader_takes_the_next(crasher: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.nrrd"
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)), str(good))
    with Sandbox() as sandbox:
        first = sandbox.call(os.getpid, seconds=30)
        assert first != os.getpid()
        with pytest.raises(ReaderCrashed, match=r"^the reader process was killed by SIGSEGV while reading it \(a crash in a C library\)$"):
            sandbox.call(SimpleITK.ReadImage, str(crasher), seconds=30)
        with pytest.raises(ReaderCrashed, match=r"^reading did not finish within 0.5 s of wall time; the reader process was stopped$"):
            sandbox.call(time.sleep, 60, seconds=0.5)
        with pytest.raises(FileNotFoundError):  # the reader's own exceptions come back as they are; the reader lives on
            sandbox.call(os.stat, str(tmp_path / "missing"), seconds=30)
        last = sandbox.call(os.getpid, seconds=30)
        assert last not in (first, os.getpid())
        assert sandbox.call(os.getpid, seconds=30) == last
        image = sandbox.call(SimpleITK.ReadImage, str(good), seconds=30)
        assert SimpleITK.GetArrayFromImage(image).tolist() == np.arange(24).reshape(2, 3, 4).tolist()


def test_map_answers_in_order_and_requeues_what_a_crash_left_behind(crasher: Path, tmp_path: Path) -> None:
    files = []
    for n in range(6):
        files.append(tmp_path / f"{n}.nrrd")
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.full((2, 2, 2), n, np.int16)), str(files[-1]))
    files.insert(2, crasher)
    with Sandbox() as sandbox:
        answers = list(sandbox.map(SimpleITK.ReadImage, [str(f) for f in files], seconds=30, window=4))
        assert [item for item, _ in answers] == [str(f) for f in files]
        assert isinstance(answers[2][1], ReaderCrashed) and "SIGSEGV" in str(answers[2][1])
        values = [int(SimpleITK.GetArrayFromImage(image).max()) for item, image in answers if item != str(crasher)]
        assert values == list(range(6))
        assert sandbox.call(len, "after", seconds=30) == 5  # nothing of the map is left in the pipe


def test_queries_read_in_a_reader_process_equal_the_in_process_read(tmp_path: Path) -> None:
    """What crosses the pipe is the slices the readers make: pixels, ids, spacing and order unchanged."""
    volume = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(100, 30, (20, 24, 6)).astype(np.float32), np.diag([0.9, 0.8, 3, 1])), volume)
    for path in (get_testdata_file("CT_small.dcm"), get_testdata_file("emri_small.dcm"), volume):
        isolated, direct = read_path(path, Identity(modality="MR"), isolated=True), read_path(path, Identity(modality="MR"))
        assert len(isolated) == len(direct) > 0
        for a, b in zip(isolated, direct):
            assert np.array_equal(a.pixels, b.pixels) and a.pixels.dtype == b.pixels.dtype
            assert (a.patient_id, a.series_id, a.modality, a.index, a.path, a.spacing, a.position) == \
                   (b.patient_id, b.series_id, b.modality, b.index, b.path, b.spacing, b.position)


def _readers() -> list[int]:
    """Pids of this process's reader processes: the children of its multiprocessing fork server."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    servers = [pid for pid in children.get(os.getpid(), []) if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return [pid for server in servers for pid in children.get(server, [])]


def _gone(pid: int) -> bool:
    """Whether a process has died (a zombie not yet reaped by its parent counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_scan_goes_on_when_its_reader_process_is_killed(tmp_path: Path) -> None:
    """As the OOM killer would: the series the dead reader held is skipped with the signal, a fresh reader reads the rest."""
    (tmp_path / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    volumes = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 900, (32, 32, 8, 6)).astype(np.int16), np.eye(4)), volumes)
    seen, killed = [], []

    def progress(event: str, path: str) -> None:
        """Before volume 2 is sent to the reader: kill the reader and wait until it is dead."""
        seen.append((event, path))
        if event == "series" and seen.count(("series", str(volumes))) == 3:
            (reader,) = _readers()
            os.kill(reader, signal.SIGKILL)
            while not _gone(reader):
                time.sleep(0.001)
            killed.append(reader)

    report = scan_archive([tmp_path], Identity(modality="MR"), progress=progress)
    assert report["skipped"] == [{"path": str(volumes), "reason": "the reader process was killed by SIGKILL while reading it (out of memory, or killed from outside)"}]
    read = sorted(s["series_id"] for p in report["patients"] for s in p["series"])
    assert read[:5] == [f"{volumes}#t{t}" for t in (0, 1, 3, 4, 5)] and len(read) == 6  # and the CT slice
    assert killed and killed[0] not in _readers()


def test_a_reader_stuck_in_a_c_call_does_not_outlive_a_killed_caller() -> None:
    """kill -9 of the caller while its reader sleeps in C: the fork server ends with the caller and the kernel ends the reader."""
    script = ("import os, sys, time\nfrom retrieval.io.sandbox import Sandbox\nsandbox = Sandbox()\n"
              "print(sandbox.call(os.getpid, seconds=60), flush=True)\nsandbox.call(time.sleep, 600, seconds=900)\n")
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    reader = int(caller.stdout.readline())
    time.sleep(0.2)  # the reader is in its sleep
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 30
    while not _gone(reader):
        assert time.monotonic() < deadline, "the reader outlived its caller"
        time.sleep(0.01)


def allocated(size: int) -> int:
    """Allocate `size` bytes in the reader and say how many (the answer stays small)."""
    return len(np.ones(size, np.uint8))


def test_a_reader_that_reaches_its_memory_limit_costs_one_call() -> None:
    """A reader's data memory is capped (RLIMIT_DATA): an allocation past it is that call's ReaderCrashed, not the OOM killer's pick."""
    with Sandbox(memory=512 << 20) as sandbox:
        first = sandbox.call(os.getpid, seconds=60)
        assert sandbox.call(allocated, 64 << 20, seconds=60) == 64 << 20
        with pytest.raises(ReaderCrashed, match=r"^the reader process reached its memory limit \(512 MiB\) while reading it$"):
            sandbox.call(allocated, 768 << 20, seconds=60)
        assert sandbox.call(os.getpid, seconds=60) != first  # a fresh reader
    with Sandbox() as sandbox:  # without a cap the same allocation is fine
        assert sandbox.call(allocated, 768 << 20, seconds=60) == 768 << 20
