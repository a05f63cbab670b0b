"""The JSON API under /api: search by upload, info, qc, patients and slice thumbnails (all behind the token)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from retrieval import TAU
from retrieval.serve.service import SearchOptions, ServerState
from retrieval.serve.uploads import received


def server(request: Request) -> ServerState:
    """The state the app loaded at start-up."""
    return request.app.state.server


Server = Annotated[ServerState, Depends(server)]


def require_access(request: Request, state: Server) -> None:
    """401 unless the request carries the token (as a bearer header or the page's session cookie)."""
    if not state.access.allows(request):
        raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})


Authorised = Annotated[None, Depends(require_access)]
router = APIRouter(prefix="/api", dependencies=[Depends(require_access)])


@router.post("/search")
async def search(request: Request, state: Server) -> JSONResponse:
    """Multipart upload of one query's files plus k, max_alpha, modality, by, slice, exclude_patient: `retrieval search --json`."""
    async with received(request, state.config.max_upload_mb) as upload:
        options = SearchOptions.from_upload(upload)
        start = time.perf_counter()
        body = await run_in_threadpool(state.search, upload, options)
        seconds = time.perf_counter() - start
    state.metrics.search.observe(seconds)
    return JSONResponse(body, headers={"Server-Timing": f"search;dur={seconds * 1000:.1f}"})  # the search alone, upload excluded


@router.get("/info")
def info(state: Server) -> dict[str, Any]:
    """`retrieval info --json` of the served index, plus server settings the page uses."""
    return state.info()


@router.get("/qc")
def qc(state: Server, above: Annotated[float, Query(ge=0.0, le=1.0)] = TAU, relative: bool = False) -> dict[str, Any]:
    """`retrieval qc --above A [--relative] --json`: series with slices whose predicted α exceeds A (or their
    series' median by A), worst first."""
    return state.qc(above, relative)


@router.get("/patients/{patient_id}")
def patient(state: Server, patient_id: Annotated[str, Path(min_length=1, max_length=256)]) -> dict[str, Any]:
    """A patient's series and slices with predicted α and thumbnail URLs."""
    return state.patient(patient_id)


@router.get("/slices/{slice_id:int}/thumbnail.png", response_class=Response)
def thumbnail(state: Server, slice_id: int) -> Response:
    """A catalog slice (by id only) rendered in its modality's window as PNG."""
    return Response(state.thumbnail(slice_id), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
