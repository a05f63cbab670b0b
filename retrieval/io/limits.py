"""Reading budgets: what a file will cost, computed from its header and refused above limits before any pixel is read.

A header can declare anything: a 7.8 KB RLE DICOM says 30,000,000 frames, a 52-byte `.nii.gz` says 1024³ float32.
Each reader turns its header into a `Cost` (the shape of one slice, the slices the file yields, the memory its
decoded pixels and their float32 slices take at once) and checks it against `Limits` (the `--max-slice-pixels`, `--max-slices-per-file` and `--max-file-mb` options),
then checks that the file is large enough to hold what it declares under its encoding: raw data byte for byte,
deflate (gzip, deflated DICOM) expands at most 1032×, RLE needs 2 bytes per 128-byte run plus a 64-byte header
and an 8-byte item per frame, every other encapsulated codec at least an 8-byte item per frame.
"""

from __future__ import annotations

import gzip
import math
import signal
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEFLATE_MAX_RATIO = 1032  # zlib's maximum expansion: a 258-byte match costs at least 2 bits
_RLE_RUN = 128  # bytes one PackBits replicate run (2 bytes) can produce
_MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-file reading limits; the defaults admit every realistic CT/MR file and refuse hostile headers."""

    max_slice_pixels: int = 8192 * 8192
    max_slices_per_file: int = 10_000
    max_file_mb: int = 2048
    seconds_per_file: float = 60.0

    def __post_init__(self) -> None:
        """Refuse non-positive limits at construction, so a bad option fails before any file is read."""
        for name in ("max_slice_pixels", "max_slices_per_file", "max_file_mb", "seconds_per_file"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    def reader_bytes(self) -> int:
        """Memory a reader process may hold (retrieval.io.sandbox): four times --max-file-mb, for the decoded pixels,
        their float32 slices and the copies a reader makes, plus 1 GiB for the interpreter and its libraries."""
        return (4 * self.max_file_mb + 1024) * _MIB

    def wall_seconds(self, files: int = 1) -> float:
        """Wall time a reader process gets for `files` files before it is killed: twice their CPU limit plus 5 s for
        a busy machine, since a C library that hangs (a loop, a blocking read) never lets the CPU-time limit fire."""
        return 2 * self.seconds_per_file * max(1, files) + 5

    def refuse(self, cost: Cost) -> str | None:
        """Why a file with this cost is refused (which limit, which option raises it), or None when it fits."""
        rows, cols = cost.shape
        if rows < 1 or cols < 1 or cost.slices < 1:
            return f"header declares an empty image ({rows}×{cols}, {cost.slices} slices)"
        if rows * cols > self.max_slice_pixels:
            return f"slices of {rows}×{cols} = {rows * cols:,} pixels, above --max-slice-pixels {self.max_slice_pixels:,}"
        if cost.slices > self.max_slices_per_file:
            return f"{cost.slices:,} slices in one file, above --max-slices-per-file {self.max_slices_per_file:,}"
        if cost.decoded_bytes > self.max_file_mb * _MIB:
            return f"decoding needs {size_text(cost.decoded_bytes)} at once, above --max-file-mb {self.max_file_mb:,}"
        return None


@dataclass(frozen=True)
class Cost:
    """What reading a file costs, from its header: one slice's (rows, cols), slices in the file, bytes held at once."""

    shape: tuple[int, int]
    slices: int
    decoded_bytes: int  # the decoded pixel array plus its float32 slices (one volume of a 4D file)


FLOAT32 = 4  # bytes a pixel takes in a Slice


class ReadTimeout(BaseException):
    """Reading one file (or series) outlived the per-file time limit.

    A BaseException, like KeyboardInterrupt: readers' `except Exception` (and nibabel's `except OSError` while it
    sniffs a file's type) must not turn it into a different reason."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ReadTimeout in the block once it has used `seconds` of CPU time (SIGVTALRM): a parser loop that never ends
    is stopped (a C call first returns). Main thread only, and never over someone else's handler of that signal."""
    usable = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGVTALRM) in (signal.SIG_DFL, signal.SIG_IGN)
    if not usable:
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise ReadTimeout(f"reading took longer than the per-file time limit ({seconds:g} s of CPU)")

    previous = signal.signal(signal.SIGVTALRM, expire)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def size_text(n: int) -> str:
    """A byte count for messages: B, KiB, MiB, GiB or TiB with 3 significant digits."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def deflate_floor(decoded: int) -> int:
    """Fewest deflate-compressed bytes that can expand to `decoded` bytes."""
    return math.ceil(decoded / DEFLATE_MAX_RATIO)


def rle_floor(frames: int, pixels: int, segments: int) -> int:
    """Fewest bytes of DICOM RLE pixel data holding `frames` frames of `pixels` pixels in `segments` byte planes."""
    return frames * (8 + 64 + segments * 2 * math.ceil(pixels / _RLE_RUN))


def short_of(declared: int, floor: int, held: int, how: str) -> str | None:
    """Refusal when `held` stored bytes are fewer than the `floor` that `declared` decoded bytes need under `how`."""
    if held >= floor:
        return None
    return f"header declares {size_text(declared)} of image data, but {how} that needs at least {size_text(floor)} and the file holds {size_text(held)}"


def gzip_length(path: Path, needed: int) -> int:
    """Decompressed length of a gzip file, counted by streaming (never more than `needed` + one chunk; O(1) memory)."""
    try:
        with path.open("rb") as handle:
            handle.seek(-4, 2)
            declared = int.from_bytes(handle.read(4), "little")  # ISIZE: the length mod 2³², trusted only to say "enough"
    except OSError:
        return 0
    if needed < 1 << 32 and declared >= needed:
        return declared
    held = 0
    try:
        with gzip.open(path, "rb") as stream:
            while held < needed:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                held += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a broken stream holds what came out before the break
    return held
