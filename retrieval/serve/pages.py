"""The web page (/, /static/*, the login form), /healthz and /metrics.

The page is plain HTML, CSS and JavaScript shipped as package data and read into memory once:
no CDN, no template engine, and no route that maps a request path to a file.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retrieval.serve.api import Authorised, Server
from retrieval.serve.security import COOKIE

LOGIN_BODY_BYTES = 4096
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def _asset(name: str) -> str:
    """One file of retrieval/serve/static."""
    return files("retrieval.serve").joinpath("static", name).read_text(encoding="utf-8")


PAGE, LOGIN = _asset("index.html"), _asset("login.html")
STATIC = {name: _asset(name) for name in ASSETS}


router = APIRouter()


def _login_page(message: str = "") -> HTMLResponse:
    """The token form, answered with 401 (it shows nothing of the index)."""
    return HTMLResponse(LOGIN.replace("<!--message-->", message), status_code=401)


@router.get("/", response_class=HTMLResponse)
def page(request: Request, state: Server) -> HTMLResponse:
    """The search page, or the token form when the browser has no session yet."""
    if not state.access.allows(request):
        return _login_page()
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, state: Server) -> Response:
    """Check a token typed into the form; on success set the session cookie and go to the page."""
    declared = request.headers.get("content-length", "")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _login_page("Send the token with the form.")
    if not declared.isdigit() or int(declared) > LOGIN_BODY_BYTES:
        return _login_page("The login form is too large.")
    form = await request.form(max_files=0, max_fields=4)
    session = state.access.login(str(form.get("token", "")))
    if session is None:
        return _login_page("Wrong token.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
    return response


@router.get("/static/{name}")
def static(name: str, _: Authorised) -> Response:
    """The page's script and style sheet, from memory by name."""
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    return Response(STATIC[name], media_type=ASSETS[name])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness for load balancers and scripts (the only route without the token)."""
    return {"status": "ok"}


@router.get("/metrics")
def metrics(state: Server, _: Authorised) -> Response:
    """Prometheus text: requests by route and status, latency histograms, index size, reloads."""
    return Response(state.metrics.exposition(), media_type=state.metrics.content_type)
