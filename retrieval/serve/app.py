"""The ASGI app factory: routers, JSON errors, metrics middleware, and the index + checkpoint loaded once.

`create_app(config)` loads the state in its lifespan (each `--workers` process loads its own);
`create_app(config, state)` serves a state already loaded (one process, errors reported before
the server starts). Every error is JSON `{"error": "..."}` with its status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from retrieval.serve import api, pages
from retrieval.serve.config import ServeConfig
from retrieval.serve.metrics import Metrics, MetricsMiddleware
from retrieval.serve.service import BadQuery, NotFound, ServerState
from retrieval.serve.uploads import UploadRefused

log = logging.getLogger("retrieval.serve")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """'name: reason' for the first invalid parameter."""
    first = exc.errors()[0]
    return f"{first['loc'][-1]}: {first['msg']}"


def create_app(config: ServeConfig, state: ServerState | None = None) -> FastAPI:
    """The server app over `config.index`; `state` when already loaded, else loaded at start-up."""

    metrics = state.metrics if state else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = state or await run_in_threadpool(ServerState.load, config, metrics)
        app.state.server = loaded
        loaded.live.watch(config.reload_every_s)
        try:
            yield
        finally:
            loaded.close()

    app = FastAPI(title="medretrieval", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)  # the docs UIs load from a CDN
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(UploadRefused)
    async def refused(_request: Request, exc: UploadRefused) -> JSONResponse:
        return _error(exc.status, str(exc), {"Connection": "close"} if exc.status == 413 else None)

    @app.exception_handler(BadQuery)
    async def bad_query(_request: Request, exc: BadQuery) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    return app


def app_from_environment() -> FastAPI:
    """The app of one `--workers` process (uvicorn factory): the config comes from the serving command."""
    return create_app(ServeConfig.from_environment())
