"""Access and privacy: the bearer token (or the page's session cookie) and patient-id pseudonyms.

With a token file every route but /healthz needs `Authorization: Bearer <token>`. A browser cannot
put that header on page loads and <img> requests, so the page's login form (POST /login, token in
the body) sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token, which the same
check accepts. With `--pseudonymise` patient ids become keyed hashes (`retrieval.checkpoint.
patient_digest`, key beside the token file); series and study ids and file paths, which often
carry names or ids, are hashed or withheld too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from starlette.requests import Request

from retrieval.checkpoint import patient_digest

COOKIE = "retrieval_session"


class Access:
    """Checks a request's credentials against the server's token (everything passes without one)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.session = hmac.new(token.encode(), b"retrieval-serve-session", hashlib.sha256).hexdigest() if token else None

    def allows(self, request: Request) -> bool:
        """True when the request carries the bearer token or the page's session cookie (or no token is set)."""
        if self.token is None:
            return True
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), str(self.session).encode())

    def login(self, offered: str) -> str | None:
        """The session cookie value for a correct token typed into the page's login form, else None."""
        if self.token is not None and hmac.compare_digest(offered.strip().encode(), self.token.encode()):
            return self.session
        return None


class Pseudonyms:
    """Shows identifiers as keyed hashes when a key is set; identity otherwise."""

    def __init__(self, key: str | None) -> None:
        self.key = key

    @property
    def active(self) -> bool:
        """True with --pseudonymise."""
        return self.key is not None

    def patient(self, patient_id: str) -> str:
        """The patient id as shown."""
        return _digest(patient_id, self.key) if self.key else patient_id

    def identifier(self, value: str | None) -> str | None:
        """A series or study id as shown (hashed under a pseudonymising key, like patient ids)."""
        return value if self.key is None or value is None else _digest(value, self.key)

    def path(self, path: str | None) -> str | None:
        """A file path as shown: withheld when pseudonymising (folder and file names often hold patient ids)."""
        return None if self.key else path

    def real(self, shown: str, patients: Iterable[str]) -> str | None:
        """The catalog patient id behind a shown id; None when pseudonymising and no patient has that pseudonym."""
        if self.key is None:
            return shown
        return next((p for p in patients if self.patient(p) == shown), None)

    def slice(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A slice entry (search match, qc or patient listing) with its identifiers as shown."""
        out = dict(entry)
        if "path" in out:
            out["path"] = self.path(out["path"])
        for name in ("series_id", "study_id"):
            if name in out:
                out[name] = self.identifier(out[name])
        if "patient_id" in out:
            out["patient_id"] = self.patient(out["patient_id"])
        return out


@lru_cache(maxsize=65_536)
def _digest(value: str, key: str) -> str:
    """Cached keyed hash (HMAC-SHA256, truncated as checkpoint digests are)."""
    return patient_digest(value, key)
