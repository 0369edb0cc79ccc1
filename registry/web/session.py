"""Browser sessions and CSRF for the pages.

The session cookie holds the owner's API token itself (HttpOnly, SameSite=Strict, path /ui, Secure over https).
That keeps sessions stateless: any registry replica, and a restarted one, accepts them; every request
re-authenticates through ``registry.auth.authenticate``, so a revoked token ends its sessions at once.

CSRF: every form carries a token that only the holder of the session can compute, HMAC-SHA256(token secret,
"expertmesh-csrf"). A page cannot read the HttpOnly cookie, so a forged form cannot carry it. The login form, which
has no session yet, uses a double-submit cookie instead. SameSite=Strict and the Origin check are a second line.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from expertmesh.errors import AuthenticationError, PermissionDeniedError
from registry.api.deps import client_ip
from registry.auth import Principal, authenticate
from registry.context import Registry

SESSION_COOKIE = "em_session"
LOGIN_CSRF_COOKIE = "em_login_csrf"
COOKIE_PATH = "/ui"
SESSION_MAX_AGE_S = 8 * 3600      # a working day; the token itself stays valid until revoked
MAX_TOKEN_CHARS = 200             # tokens are 47 characters; anything far longer is not one


@dataclass(frozen=True)
class WebSession:
    principal: Principal
    csrf: str


class LoginRequired(Exception):
    """No session, or its token no longer authenticates: the page sends the browser to the login form."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class CsrfError(PermissionDeniedError):
    code = "csrf_failed"


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), b"expertmesh-csrf", hashlib.sha256).hexdigest()[:32]


def principal_for(reg: Registry, request: Request, secret: str) -> Principal:
    """Authenticate ``secret`` exactly as the JSON API authenticates a bearer token."""
    if not secret or len(secret) > MAX_TOKEN_CHARS or any(c.isspace() for c in secret):
        raise AuthenticationError("that is not a registry token (tokens start with 'emr_')")
    with reg.db.read() as s:
        return authenticate(s, f"Bearer {secret}", admin_token=reg.settings.admin_token,
                            ip=client_ip(request, reg))


def current_session(reg: Registry, request: Request) -> WebSession:
    secret = request.cookies.get(SESSION_COOKIE, "")
    if not secret:
        raise LoginRequired()
    try:
        principal = principal_for(reg, request, secret)
    except AuthenticationError:
        raise LoginRequired("your session ended: its token is unknown or was revoked; log in again") from None
    return WebSession(principal=principal, csrf=csrf_for(secret))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=SESSION_MAX_AGE_S, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=_secure(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def set_login_csrf(response: Response, request: Request, value: str) -> None:
    response.set_cookie(LOGIN_CSRF_COOKIE, value, max_age=3600, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=_secure(request))


def check_origin(request: Request, *, trust_forwarded: bool) -> None:
    """A browser sends Origin on every POST; one from another site is refused whatever the form carries."""
    origin = request.headers.get("origin")
    if origin is None:   # not a browser form post (curl, the typed client); the CSRF token still applies
        return
    hosts = {request.headers.get("host", "")}
    if trust_forwarded:   # behind the reverse proxy the settings trust, the browser saw the proxy's host
        hosts.add(request.headers.get("x-forwarded-host", "").split(",")[0].strip())
    if urlsplit(origin).netloc not in hosts:
        raise CsrfError("cross-site form submission refused (Origin does not match this registry)")


def check_csrf(reg: Registry, request: Request, sent: str, expected: str) -> None:
    check_origin(request, trust_forwarded=reg.settings.trust_forwarded_for)
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfError("the form's CSRF token is missing or wrong; reload the page and try again")
