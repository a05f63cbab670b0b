"""What the routes do, over one loaded index and checkpoint: search an upload, info, qc, a patient, a thumbnail.

Search, info and qc are `retrieval.search` and `indexer.summary`, called as the CLI calls them;
this module only adds what a web client needs on top of their JSON: catalog ids and thumbnail
URLs per slice, the query's thumbnail, and pseudonyms.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrieval import TAU
from retrieval.serve.config import ServeConfig
from retrieval.serve.live import LiveIndex
from retrieval.serve.metrics import Metrics
from retrieval.serve.records import patient_series, slice_ids
from retrieval.serve.security import Access, Pseudonyms
from retrieval.serve.thumbnails import catalog_thumbnail, pick, render
from retrieval.serve.uploads import Upload

if TYPE_CHECKING:
    from indexer.directory import IndexDirectory
    from retrieval.metric import DistortionAwareMetric
    from retrieval.runtime import OnnxMetric

MAX_K = 1000


class NotFound(LookupError):
    """An id the index does not have (answered 404)."""


class BadQuery(ValueError):
    """A query the server cannot run, with the reason (answered 422)."""


def thumbnail_url(slice_id: int) -> str:
    """Where the page fetches a catalog slice's thumbnail."""
    return f"/api/slices/{slice_id}/thumbnail.png"


@dataclass(frozen=True)
class SearchOptions:
    """The form fields of POST /api/search, checked."""

    k: int = 10
    max_alpha: float | None = None
    modality: str | None = None
    by: str = "patient"
    slice_index: int | None = None
    exclude_patients: tuple[str, ...] = ()
    query_thumbnail: bool = False  # the page asks for it; it costs a second read of the upload

    @classmethod
    def from_upload(cls, upload: Upload) -> SearchOptions:
        """Parse and check the fields; BadQuery names the first wrong one."""
        from retrieval.search import BY

        k = _number(upload.value("k"), "k", int, 1, MAX_K)
        max_alpha = _number(upload.value("max_alpha"), "max_alpha", float, 0.0, 1.0)
        slice_index = _number(upload.value("slice"), "slice", int, 0, None)
        modality = (upload.value("modality") or "").upper() or None
        if modality not in (None, "CT", "MR"):
            raise BadQuery(f"modality must be CT or MR, got {modality!r}")
        by = upload.value("by") or "patient"
        if by not in BY:
            raise BadQuery(f"by must be one of {', '.join(BY)}, got {by!r}")
        excluded = tuple(p.strip() for p in upload.fields.get("exclude_patient", []) if p.strip())
        thumbnail = (upload.value("thumbnail") or "0").lower() in ("1", "true", "yes")
        return cls(10 if k is None else int(k), max_alpha, modality, by, None if slice_index is None else int(slice_index), excluded, thumbnail)


def _number(text: str | None, name: str, kind: type, low: float, high: float | None) -> float | int | None:
    """A numeric form field within [low, high], or None when absent."""
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadQuery(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise BadQuery(f"{name} must be in [{low:g}, {'∞' if high is None else f'{high:g}'}], got {text}")
    return value


@dataclass
class ServerState:
    """Everything loaded once at start-up: the live index, the checkpoint, access, pseudonyms and metrics."""

    config: ServeConfig
    live: LiveIndex
    metric: DistortionAwareMetric | OnnxMetric
    access: Access
    pseudonyms: Pseudonyms
    metrics: Metrics

    @classmethod
    def load(cls, config: ServeConfig, metrics: Metrics | None = None) -> ServerState:
        """Read the secrets, open the index and load its checkpoint (once per process), as `retrieval search` does."""
        import faiss

        from retrieval.io.sandbox import warm

        warm()  # query files are read in reader processes forked from it
        faiss.omp_set_num_threads(config.threads)
        access, pseudonyms, metrics = Access(config.token()), Pseudonyms(config.pseudonym_key()), metrics or Metrics()

        def reloaded(directory: IndexDirectory) -> None:
            metrics.reloads.inc()
            cls._measure(metrics, directory)

        live = LiveIndex(config.index, on_reload=reloaded)
        try:
            with live.use() as directory:
                metric = directory.embedder(config.checkpoint, config.device, config.backend)
                cls._measure(metrics, directory)
            if "torch" in sys.modules:  # the torch backend: one thread per request, requests run side by side
                sys.modules["torch"].set_num_threads(config.threads)
        except BaseException:
            live.close()
            raise
        return cls(config, live, metric, access, pseudonyms, metrics)

    @staticmethod
    def _measure(metrics: Metrics, directory: IndexDirectory) -> None:
        """Index-size gauges for a freshly opened snapshot."""
        metrics.slices.set(len(directory.store))
        metrics.patients.set(len(directory.catalog.patients()))

    def close(self) -> None:
        """Stop watching the index and close it."""
        self.live.close()

    def search(self, upload: Upload, options: SearchOptions) -> dict[str, Any]:
        """`retrieval search --json` on the uploaded query, plus catalog ids, thumbnail URLs and the query's thumbnail."""
        from retrieval.io import Identity
        from retrieval.search import search_path

        if not upload.files:
            raise BadQuery("no file in the upload: add one or more DICOM, NIfTI or image files of one query")
        target = upload.files[0] if len(upload.files) == 1 else upload.folder
        identity = Identity(modality=options.modality)
        with self.live.use() as directory:
            patients = directory.catalog.patients() if self.pseudonyms.active and options.exclude_patients else set()
            excluded = [real for real in (self.pseudonyms.real(p, patients) for p in options.exclude_patients) if real is not None]
            try:
                result = search_path(directory, self.metric, target, identity, slice_index=options.slice_index, k=options.k, by=options.by,
                                     max_alpha=options.max_alpha, modality=options.modality, exclude_patients=excluded,
                                     limits=self.config.limits())
            except (ValueError, FileNotFoundError) as exc:
                raise BadQuery(str(exc).replace(f"{upload.folder}{os.sep}", "").replace(str(upload.folder), "the upload").replace("--modality", "modality")) from None
            body = result.as_dict()
            ids = slice_ids(directory, ((s.path, s.slice_index) for match in result.results for s in match.slices))
        names = [path.name for path in upload.files]
        body["query"].update(path=names[0] if len(names) == 1 else f"{len(names)} files", files=names)
        if options.query_thumbnail:
            body["query"]["thumbnail"] = self._query_thumbnail(target, identity, options.slice_index)
        for match in body["results"]:  # patients, slices, or series/studies: identifiers shown the same way in each
            match.update(self.pseudonyms.slice({k: v for k, v in match.items() if k != "slices"}))
            match["slices"] = [self._with_thumbnail(s, ids.get((s["path"], s["slice_index"]))) for s in match["slices"]]
        return body

    def _query_thumbnail(self, target: os.PathLike[str], identity: Any, slice_index: int | None) -> str | None:
        """A data: URL of the query slice searched with (the given one, else the middle one), since the upload is deleted."""
        from retrieval.io import read_path

        slices = read_path(target, identity, limits=self.config.limits(), isolated=True)
        chosen = pick(slices, slices[0].series_id, slice_index) if slice_index is not None else slices[len(slices) // 2]
        if chosen is None or chosen.modality not in ("CT", "MR"):
            return None
        return "data:image/png;base64," + base64.b64encode(render(chosen.pixels, chosen.modality, chosen.spacing)).decode()

    def _with_thumbnail(self, entry: dict[str, Any], slice_id: int | None) -> dict[str, Any]:
        """A slice entry with its catalog id and thumbnail URL, identifiers as shown."""
        out = self.pseudonyms.slice(entry)
        out["id"] = slice_id
        out["thumbnail"] = thumbnail_url(slice_id) if slice_id is not None else None
        return out

    def info(self) -> dict[str, Any]:
        """`retrieval info --json` of the served snapshot, plus what the page needs to know about the server."""
        from indexer.summary import info
        from retrieval.search import BY

        with self.live.use() as directory:
            summary = info(directory)
            summary["searched_slices"] = len(directory.store)
        summary["by_patient"] = {self.pseudonyms.patient(p): n for p, n in summary["by_patient"].items()}
        summary["server"] = {"by": list(BY), "tau": TAU, "pseudonymised": self.pseudonyms.active,
                             "max_upload_mb": self.config.max_upload_mb, "reloads": self.live.reloads}
        return summary

    def qc(self, above: float, relative: bool = False) -> dict[str, Any]:
        """`retrieval qc --json`, worst series first, with slice ids and thumbnail URLs."""
        from indexer.summary import quality_control

        with self.live.use() as directory:
            report = quality_control(directory, above, relative)
            ids = slice_ids(directory, ((s["path"], s["slice_index"]) for entry in report["series"] for s in entry["slices"]))
        for entry in report["series"]:
            entry.update(self.pseudonyms.slice({k: v for k, v in entry.items() if k != "slices"}))
            entry["slices"] = [self._with_thumbnail(s, ids.get((s["path"], s["slice_index"]))) for s in entry["slices"]]
        report["patients"] = {self.pseudonyms.patient(p): n for p, n in report["patients"].items()}
        return report

    def patient(self, shown_id: str) -> dict[str, Any]:
        """A patient's series and slices with predicted α and thumbnails; NotFound when it has none."""
        with self.live.use() as directory:
            real = self.pseudonyms.real(shown_id, directory.catalog.patients())
            series = patient_series(directory, real) if real is not None else []
        if not series:
            raise NotFound(f"patient {shown_id!r} is not in the index")
        for entry in series:
            entry.update(self.pseudonyms.slice({k: v for k, v in entry.items() if k != "slices"}))
            entry["slices"] = [self._with_thumbnail({k: v for k, v in s.items() if k != "id"}, s["id"]) for s in entry["slices"]]
        return {"patient_id": shown_id, "n_slices": sum(e["n_slices"] for e in series), "series": series}

    def thumbnail(self, slice_id: int) -> bytes:
        """The PNG of catalog slice `slice_id`; NotFound for an unknown id or an image no longer readable."""
        from retrieval.serve.thumbnails import SliceUnavailable

        with self.live.use() as directory:
            row = directory.catalog.slices([slice_id]).get(slice_id)
        if row is None:
            raise NotFound(f"slice {slice_id} is not in the index")
        try:
            return catalog_thumbnail(row.id, row.path, row.series_id, row.slice_index, row.modality)
        except SliceUnavailable as exc:
            raise NotFound(str(exc)) from None
