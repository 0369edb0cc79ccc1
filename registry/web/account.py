"""Login, logout, the owner's page, and the pages' state changes (withdraw, restore, issue and revoke tokens).

Every POST checks the CSRF token before doing anything, then calls the same service function as the JSON API, so
the permission checks (own experts only, publish scope) are the API's. Success answers 303 to a GET page.
"""
from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from expertmesh.errors import AuthenticationError, ExpertMeshError, InvalidInputError
from registry import auth, events
from registry import experts as expert_svc
from registry.auth import ADMIN, SCOPES
from registry.context import Registry
from registry.web.handlers import registry_of, renderer_of, run_page, safe_next
from registry.web.session import (
    LOGIN_CSRF_COOKIE, WebSession, check_csrf, clear_session, new_login_csrf, principal_for, set_login_csrf,
    set_session,
)
from registry.web.tokens import issue_own_token

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_REASON = 2000          # the JSON API's StatusChangeRequest limit
AUDIT_ROWS = 100
ISSUABLE = [s for s in SCOPES if s != ADMIN]


def _login_page(request: Request, *, next_url: str, message: str = "", status: int = 200) -> Response:
    csrf = new_login_csrf()
    page = renderer_of(request).page(request, "login.html", status=status, next_url=next_url, message=message,
                                     csrf=csrf)
    set_login_csrf(page, request, csrf)
    return page


@router.get("/login")
def login_form(request: Request, next: str = "", ended: str = "") -> Response:
    message = "Your session ended: its token is unknown or was revoked. Log in again." if ended else ""
    return _login_page(request, next_url=safe_next(next), message=message)


@router.post("/login")
def login(request: Request, token: str = Form(""), csrf: str = Form(""), next: str = Form("")) -> Response:
    reg = registry_of(request)
    try:
        check_csrf(reg, request, csrf, request.cookies.get(LOGIN_CSRF_COOKIE, ""))
    except ExpertMeshError as e:
        return renderer_of(request).error(request, e)
    secret = token.strip()
    try:
        principal_for(reg, request, secret)
    except AuthenticationError:
        return _login_page(request, next_url=safe_next(next), status=401,
                           message="That token is unknown, revoked or expired. Ask your registry admin for a new "
                                   "one (expertmesh registry create-token).")
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session(response, request, secret)
    return response


def _posted(request: Request, csrf: str, act) -> Response:  # noqa: ANN001 - act(reg, session) -> Response
    """Check the form's CSRF token for the session, then run ``act``; errors become the error page."""
    def build(reg: Registry, session: WebSession) -> Response:
        check_csrf(reg, request, csrf, session.csrf)
        return act(reg, session)
    return run_page(request, build)


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    def act(_reg: Registry, _session: WebSession) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        clear_session(response)
        return response
    return _posted(request, csrf, act)


def _reason(value: str) -> str:
    reason = value.strip()
    if not reason:
        raise InvalidInputError("a reason is required", detail={"field": "reason"})
    if len(reason) > MAX_REASON:
        raise InvalidInputError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    return reason


def _version(value: str) -> int | None:
    value = value.strip()
    return None if not value else expert_svc.parse_ref(value)


def _status_change(request: Request, name: str, csrf: str, reason: str, version: str, *, withdraw: bool) -> Response:
    def act(reg: Registry, session: WebSession) -> Response:
        expert_svc.set_status(reg, session.principal, name, withdraw=withdraw, reason=_reason(reason),
                              version=_version(version))
        return RedirectResponse(f"/ui/experts/{name}", status_code=303)
    return _posted(request, csrf, act)


@router.post("/experts/{name}/withdraw")
def withdraw(name: str, request: Request, csrf: str = Form(""), reason: str = Form(""),
             version: str = Form("")) -> Response:
    return _status_change(request, name, csrf, reason, version, withdraw=True)


@router.post("/experts/{name}/restore")
def restore(name: str, request: Request, csrf: str = Form(""), reason: str = Form(""),
            version: str = Form("")) -> Response:
    return _status_change(request, name, csrf, reason, version, withdraw=False)


def _account_page(request: Request, reg: Registry, session: WebSession, *, issued: str = "",
                  issued_scopes: str = "") -> Response:
    p = session.principal
    experts = expert_svc.list_experts(reg, p, owner=None if p.is_admin else p.owner_name, status="all",
                                      limit=min(500, reg.settings.list_limit_max))
    with reg.db.read() as s:
        tokens = auth.list_tokens(s, p, p.owner_name) if p.owner_id is not None else []
        audit = events.read_audit(s, p, limit=AUDIT_ROWS)
    return renderer_of(request).page(request, "account.html", session=session, experts=experts, tokens=tokens,
                                     audit=audit, issuable=ISSUABLE, issued=issued, issued_scopes=issued_scopes,
                                     as_utc=events.as_utc)


@router.get("/account")
def account(request: Request) -> Response:
    return run_page(request, lambda reg, session: _account_page(request, reg, session))


@router.post("/tokens")
async def create_token(request: Request) -> Response:
    # Read by hand: a multi-valued field (scopes) and the CSRF token come in one form.
    form = await request.form()
    csrf, label = str(form.get("csrf", "")), str(form.get("label", ""))
    scopes = [str(v) for v in form.getlist("scopes")]

    def act(reg: Registry, session: WebSession) -> Response:
        with reg.db.write() as s:
            token, secret = issue_own_token(s, session.principal, scopes, label)
            scope_text = token.scopes
        # Rendered, not redirected: the secret is shown once and must not sit in a URL or history.
        return _account_page(request, reg, session, issued=secret, issued_scopes=scope_text)

    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_posted, request, csrf, act)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: str, request: Request, csrf: str = Form("")) -> Response:
    def act(reg: Registry, session: WebSession) -> Response:
        if not token_id.isdigit():
            raise InvalidInputError(f"token id {token_id!r} must be a number")
        with reg.db.write() as s:
            auth.revoke_token(s, session.principal, int(token_id))
        return RedirectResponse("/ui/account", status_code=303)
    return _posted(request, csrf, act)
