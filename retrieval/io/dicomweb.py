"""DICOMweb source `dicomweb:http://host:port/dicom-web`: QIDO-RS lists, WADO-RS fetches, the DICOM reader decodes.

Listing (headers only, nothing fetched): studies (all, `studies`, or those from `since` on), their series,
and each series' instances with the attributes the reader needs (SOP class, rows, columns, frames, spacing,
PatientID, Modality). A series is keyed like a folder's: PatientID (the StudyInstanceUID when empty) and
SeriesInstanceUID; its `checksums` are its SOPInstanceUIDs, so an unchanged series (same UID, same instance
set) is recognised without fetching it. Loading a series fetches its instances with WADO-RS in their stored
transfer syntax, writes them to a temporary folder and reads them with the folder reader
(`retrieval.io.dicom`): the same ordering, rescaling and decoding, hence the same slices as the files.
Requests retry with exponential backoff (urllib3 `Retry`: connection errors, 408/429/5xx); what still fails
raises `SourceUnavailable`, one line naming the URL and the status.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterator

from retrieval.io.identity import Identity, normalise_modality
from retrieval.io.slices import Series, SeriesKey, Skipped, Slice

PREFIX = "dicomweb:"
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
# What QIDO-RS must return per instance for the series header (servers add their defaults).
# ImageType: a series of localizers is skipped from the listing, never fetched (Orthanc reads the files for Rows and
# PixelSpacing anyway: asking for it cost 151 instances 0.03–0.05 s more, 2026-12-04)
INSTANCE_FIELDS = ("SOPClassUID", "ImageType", "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "PatientID", "Modality")
_STORED_SYNTAX = (("application/dicom", "*"),)  # as stored: no transcoding, so pixels equal the uploaded files'


class SourceUnavailable(ConnectionError):
    """A DICOMweb server could not be reached or refused a request (the message is one line: URL and status)."""


@dataclass(frozen=True)
class Credentials:
    """Bearer token or HTTP basic user/password for a DICOMweb server (never shown in reprs or messages)."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)


def read_secret(path: Path, what: str) -> str:
    """The first line of a secret file (token, password), or ValueError naming the file and the reason."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if not text or not text[0].strip():
        raise ValueError(f"{path}: the {what} file is empty")
    return text[0].strip()


def dicom_date(value: str) -> str:
    """A date as DICOM DA (YYYYMMDD) from YYYY-MM-DD or YYYYMMDD; ValueError naming the value otherwise."""
    text = value.strip().replace("-", "")
    try:
        if len(text) != 8:
            raise ValueError
        return datetime.strptime(text, "%Y%m%d").strftime("%Y%m%d")
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a date as YYYY-MM-DD") from None


def is_remote(path: str) -> bool:
    """True for a source or catalog path that names a DICOMweb resource, not a local file."""
    return str(path).startswith(PREFIX)


@dataclass(frozen=True)
class DicomWeb:
    """One DICOMweb server (or some of its studies) as an archive source."""

    url: str
    studies: tuple[str, ...] = ()
    since: str | None = None  # DICOM DA: only studies from this date on
    credentials: Credentials = Credentials()
    retries: int = 4
    backoff: float = 0.5
    timeout: float = 60.0

    @classmethod
    def parse(cls, source: str, **options: Any) -> "DicomWeb":
        """`dicomweb:http(s)://host[:port]/path` into a source; ValueError naming the source when malformed."""
        url = source[len(PREFIX):] if is_remote(source) else source
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{source}: a DICOMweb source is dicomweb:http://host:port/dicom-web (http or https)")
        return cls(url.rstrip("/"), **options)

    @property
    def name(self) -> str:
        """The source as the user writes it, and the prefix of every catalog path it yields."""
        return PREFIX + self.url

    def series_path(self, study: str, series: str) -> str:
        """Catalog path of a series: its WADO-RS resource under the source name."""
        return f"{self.name}/studies/{study}/series/{series}"

    def scopes(self) -> list[str]:
        """Catalog path prefixes this listing covers completely (series under them that it lacks are gone).

        The whole server, or the named studies; a `since` listing leaves older studies out by design, so it covers none.
        """
        if self.since:
            return []
        return [f"{self.name}/studies/{study}" for study in self.studies] if self.studies else [self.name]

    def client(self) -> Any:
        """This process's dicomweb-client for the source (one session: connections are reused between requests)."""
        return _client(self, os.getpid())  # per process: a forked worker must not share its parent's sockets

    def new_client(self) -> Any:
        """A dicomweb-client with retries and backoff on its session and the credentials set."""
        import requests
        from dicomweb_client.api import DICOMwebClient
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        retry = Retry(total=self.retries, backoff_factor=self.backoff, status_forcelist=RETRY_STATUSES, allowed_methods=["GET"], raise_on_status=False)
        session = requests.Session()
        for scheme in ("http://", "https://"):
            session.mount(scheme, HTTPAdapter(max_retries=retry))
        if self.credentials.token:
            session.headers["Authorization"] = f"Bearer {self.credentials.token}"
        elif self.credentials.user:
            session.auth = (self.credentials.user, self.credentials.password or "")
        client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        client.set_http_retry_params(retry=False)  # one retry layer: the session's
        return client

    @contextmanager
    def requests(self, what: str) -> Iterator[None]:
        """Turn any HTTP failure inside into one SourceUnavailable line naming the URL, the request and the status."""
        import requests

        try:
            yield
        except requests.HTTPError as exc:
            response = exc.response
            hint = " (check --user/--password-file or --auth-token-file)" if response is not None and response.status_code in (401, 403) else ""
            status = f"HTTP {response.status_code} {response.reason}" if response is not None else "HTTP error"
            raise SourceUnavailable(f"{self.name}: {status} on {what}{hint}") from None
        except requests.RequestException as exc:
            raise SourceUnavailable(f"{self.name}: {_network_reason(exc)} on {what} (after {self.retries} retries)") from None

    def read(self, identity: Identity) -> Iterator[Series | Skipped]:
        """List the source (QIDO-RS, nothing fetched) as lazily fetched Series, non-image instances as Skipped."""
        client = self.client()
        for study in self._studies(client):
            with self.requests(f"QIDO-RS /studies/{study}/instances"):  # one listing per study, all its series
                instances = client.search_for_instances(study, fields=[*INSTANCE_FIELDS, "SeriesInstanceUID"], get_remaining=True)
            by_series: dict[str, list[dict[str, Any]]] = {}
            for item in instances:
                by_series.setdefault(str(item.get("0020000E", {}).get("Value", [""])[0]), []).append(item)
            for series in sorted(by_series):
                yield from self._series(study, series, by_series[series], identity)

    def _studies(self, client: Any) -> list[str]:
        """The studies to read: the named ones, else every study (from `since` on) the server lists."""
        if self.studies:
            return list(self.studies)
        filters = {"StudyDate": f"{self.since}-"} if self.since else None
        with self.requests("QIDO-RS /studies"):
            return sorted(_values(client.search_for_studies(fields=["StudyInstanceUID"], search_filters=filters, get_remaining=True), "0020000D"))

    def _series(self, study: str, series: str, instances: list[dict[str, Any]], identity: Identity) -> Iterator[Series | Skipped]:
        """One Series from a series' QIDO-RS instance list; instances that hold no slice of anatomy are Skipped."""
        import pydicom

        from retrieval.io.dicom_checks import not_a_slice

        base = self.series_path(study, series)
        usable: list[tuple[Any, str]] = []
        for item in instances:
            ds = pydicom.Dataset.from_json(item)
            url = f"{base}/instances/{ds.get('SOPInstanceUID', '')}"
            reason = not_a_slice(ds)
            if reason:
                yield Skipped(url, reason)
            else:
                usable.append((ds, url))
        if not usable:
            return
        usable.sort(key=lambda pair: (_int(pair[0].get("InstanceNumber")), pair[1]))
        first = usable[0][0]
        patient = str(first.get("PatientID") or "").strip() or study
        key = SeriesKey(patient, series, normalise_modality(str(first.get("Modality") or "") or identity.modality), study)
        files = [url for _, url in usable]
        spacings = [tuple(float(v) for v in ds.PixelSpacing) for ds, _ in usable if len(ds.get("PixelSpacing") or ()) == 2]
        yield Series(
            patient_id=key.patient_id, series_id=series, modality=key.modality, path=base, files=files,
            n_slices=sum(max(1, _int(ds.get("NumberOfFrames"), 1)) for ds, _ in usable),
            shape=Counter((int(ds.Rows), int(ds.Columns)) for ds, _ in usable).most_common(1)[0][0],
            spacing=Counter(spacings).most_common(1)[0][0] if spacings else (1.0, 1.0), study_id=study,
            checksums={url: "sop:" + url.rsplit("/", 1)[1] for url in files},
            loader=partial(fetch_series, self, key, base),
        )


@lru_cache(maxsize=16)
def _client(source: DicomWeb, pid: int) -> Any:
    """The cached client of one source in one process."""
    return source.new_client()


def _values(listing: list[dict[str, Any]], tag: str) -> set[str]:
    """The UIDs of one tag in a QIDO-RS JSON listing."""
    return {str(item[tag]["Value"][0]) for item in listing if item.get(tag, {}).get("Value")}


def _int(value: Any, default: int = 1 << 30) -> int:
    """An integer attribute, or `default` when absent or malformed."""
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _network_reason(exc: Exception) -> str:
    """A short reason for a failed request: the OS error when there is one, else the failure's kind."""
    import requests

    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if found:
        return f"cannot connect ({found.group(1).strip()})"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection lost during the transfer"
    return type(exc).__name__


def fetch_series(source: DicomWeb, key: SeriesKey, base: str) -> list[Slice | Skipped]:
    """Fetch a series with WADO-RS into a temporary folder and read it with the DICOM reader (in a worker)."""
    from retrieval.io.dicom import load_frames, order_frames, read_header

    client = source.client()
    study = key.study_id or ""
    with tempfile.TemporaryDirectory(prefix="dicomweb-") as folder:
        urls: dict[str, str] = {}
        with source.requests(f"WADO-RS /studies/{study}/series/{key.series_id}"):
            for ds in client.iter_series(study, key.series_id, media_types=_STORED_SYNTAX):
                path = str(Path(folder) / f"{len(urls):06d}.dcm")
                ds.save_as(path, enforce_file_format=True)
                urls[path] = f"{base}/instances/{ds.get('SOPInstanceUID', '')}"
        frames, problems = [], []
        for path, url in urls.items():
            header = read_header(Path(path), Identity())
            if isinstance(header, Skipped):
                problems.append(Skipped(url, header.reason))
            else:
                frames.extend(header)
        items = load_frames(tuple(order_frames(frames)), key) if frames else []
    return [replace(item, path=urls[item.path]) for item in items] + problems
