"""Receive a multipart upload straight into a private temporary folder, bounded in size, removed afterwards.

The body is parsed as it streams in (python-multipart's push parser): file parts go to files
created owner-only in a fresh `mkdtemp` folder (mode 0700), form fields stay in memory (small), and
nothing is ever written anywhere else. A declared Content-Length over the limit is refused before
reading; a body that grows past it is refused as soon as it does. The folder is removed when the
`received` block ends, whatever happened inside it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from anyio import to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

MAX_FIELDS = 64
MAX_FIELD_BYTES = 4096
MAX_FILES = 10_000
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadRefused(Exception):
    """An upload the server will not take, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """The uploaded files (in the private folder, in upload order) and the form fields."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        """The last non-empty value of a form field, or None."""
        values = [v for v in self.fields.get(name, []) if v.strip()]
        return values[-1].strip() if values else None


def safe_name(name: str, taken: set[str]) -> str:
    """The uploaded file's base name reduced to [A-Za-z0-9._-] (extensions kept: NIfTI readers need them), unique."""
    base = _UNSAFE.sub("_", PurePosixPath(name.replace("\\", "/")).name).lstrip(".")[-MAX_NAME:] or "upload"
    candidate, n = base, 1
    while candidate in taken:
        candidate, n = f"{n}_{base}", n + 1
    taken.add(candidate)
    return candidate


class _Receiver:
    """python-multipart callbacks that write file parts into the folder and keep fields in memory."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.taken: set[str] = set()
        self.headers: dict[bytes, bytes] = {}
        self.header_name = b""
        self.header_value = b""
        self.handle: BinaryIO | None = None
        self.field_name: str | None = None
        self.field_value = bytearray()
        self.pending: list[tuple[BinaryIO, bytes]] = []
        self.n_fields = 0

    def on_part_begin(self) -> None:
        self.headers, self.handle, self.field_name, self.field_value = {}, None, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise UploadRefused(422, "a multipart part has no name")
        if b"filename" in options:
            if len(self.upload.files) >= MAX_FILES:
                raise UploadRefused(413, f"too many files (at most {MAX_FILES})")
            path = self.upload.folder / safe_name(options[b"filename"].decode("utf-8", "replace"), self.taken)
            self.handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            self.upload.files.append(path)
        else:
            self.n_fields += 1
            if self.n_fields > MAX_FIELDS:
                raise UploadRefused(413, f"too many form fields (at most {MAX_FIELDS})")
            self.field_name = name.decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.handle is not None:
            self.pending.append((self.handle, bytes(data[start:end])))
            return
        self.field_value += data[start:end]
        if len(self.field_value) > MAX_FIELD_BYTES:
            raise UploadRefused(413, f"form field {self.field_name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.handle is not None:
            self.pending.append((self.handle, b""))  # b"" closes the file once the data before it is written
        elif self.field_name is not None:
            self.upload.fields.setdefault(self.field_name, []).append(self.field_value.decode("utf-8", "replace"))

    def flush(self) -> None:
        """Write (and close) what the parser produced so far; run in a worker thread."""
        for handle, data in self.pending:
            if data:
                handle.write(data)
            else:
                handle.close()
        self.pending.clear()

    def close(self) -> None:
        """Close files a broken request left open."""
        for handle, _ in self.pending:
            handle.close()
        if self.handle is not None:
            self.handle.close()


@asynccontextmanager
async def received(request: Request, limit_mb: float) -> AsyncIterator[Upload]:
    """Parse the request's multipart body (at most `limit_mb` MiB) into a fresh private folder; remove the folder when the block ends."""
    limit_bytes = int(limit_mb * 2**20)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadRefused(415, "send the query as multipart/form-data (files plus fields)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise UploadRefused(413, f"upload of {int(declared) / 2**20:.1f} MiB is over the limit of {limit_mb:g} MiB (--max-upload-mb)")
    folder = Path(tempfile.mkdtemp(prefix="retrieval-upload-"))
    upload = Upload(folder)
    receiver = _Receiver(upload)
    try:
        try:
            await _parse(request, options[b"boundary"], receiver, limit_mb)
        except MultipartParseError as exc:
            raise UploadRefused(422, f"malformed multipart body ({exc})") from None
        yield upload
    finally:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _parse(request: Request, boundary: bytes, receiver: _Receiver, limit_mb: float) -> None:
    """Feed the streamed body to the push parser, writing file data in a worker thread chunk by chunk."""
    callbacks = {name: getattr(receiver, name) for name in ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                                                             "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    size, limit_bytes = 0, int(limit_mb * 2**20)
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise UploadRefused(413, f"upload is over the limit of {limit_mb:g} MiB (--max-upload-mb)")
        parser.write(chunk)
        if receiver.pending:
            await to_thread.run_sync(receiver.flush)
    parser.finalize()
    receiver.flush()
