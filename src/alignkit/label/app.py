"""The labeling web app (FastAPI, server-rendered pages). `create_app(engine)` builds it; `alignkit label serve`
runs it with uvicorn.

Pages: `/login?token=...` (an annotator's personal link: a confirmation page, "Sign in as NAME?", whose form
POSTs the token to `/login`; that sets an HttpOnly cookie holding the token and redirects to the task page),
`/` (the next task: a pair, a ranking or one response to judge good or bad; the sign-in form when signed
out), `POST /vote`, `POST /skip`, `/admin` (progress, annotators, agreement; admins only) and
`POST /admin/invite`. HEAD is answered like GET.

Security. A request's annotator is the one whose token hash matches the cookie; forms carry no annotator,
so nobody can vote as someone else, and a vote for a task given to another annotator is refused (403).
Every form carries a CSRF token (an HMAC under the database's secret) that is checked in constant time: of
the annotator's token hash for the signed-in forms, and of a random pre-sign-in cookie (SameSite=Strict) for
the sign-in forms, so another site can not sign a browser in as its own annotator (login CSRF): a link only
ever shows the confirmation page, and signing in is a POST from a page of this app. The sign-in cookie is
SameSite=Lax. Invite links are built only from the configured base URL (`serve --url`), never from the
request's Host header. Model text goes through Jinja2 with autoescaping, so a response is shown as the text
it is; the Content-Security-Policy allows scripts only from /static as a second line of defence. Request
bodies over `max_request_bytes` are refused (413) before parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException

from alignkit.errors import AlignkitError
from alignkit.label import check_base_url, store
from alignkit.label.db import setting

COOKIE = "alignkit_label"
LOGIN_COOKIE = "alignkit_label_login"  # the random value the sign-in forms' CSRF token is bound to
HERE = Path(__file__).parent
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class Limits:
    """ASGI middleware: refuse a request body over `max_bytes` (413) before the app reads it, and add the
    security headers to every response."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _too_large(send_with_headers, self.max_bytes)
        chunks, size, more = [], 0, True
        while more:  # read the whole (bounded) body, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _too_large(send_with_headers, self.max_bytes)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send_with_headers)


async def _too_large(send, max_bytes: int) -> None:
    body = f"request body over {max_bytes} bytes".encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class HeadAsGet:
    """ASGI middleware: answer HEAD like GET (the same status and headers), without the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def create_app(engine: Engine, *, timeout_s: float = store.DEFAULT_TIMEOUT_S, max_request_bytes: int = 64 * 1024,
               secure_cookies: bool = False, base_url: str | None = None):
    """The labeling app on `engine` (see the module docstring). `timeout_s`: how long an open task keeps its
    place; `secure_cookies`: mark the cookies Secure (when served over HTTPS); `base_url`: the app's address
    as annotators reach it, for the links of invites made on the admin page (without it, the page gives the
    token and says that no address is configured)."""
    base_url = check_base_url(base_url) if base_url else None
    with engine.connect() as conn:
        secret = setting(conn, "csrf_secret").encode()
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    app = FastAPI(title="alignkit label", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(Limits, max_bytes=max_request_bytes)
    app.add_middleware(HeadAsGet)

    def page(template: str, code: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(**context), status_code=code)

    def csrf_for(token: str) -> str:
        return hmac.new(secret, b"csrf:" + store.hash_token(token).encode(), hashlib.sha256).hexdigest()

    def annotator(request: Request, *, csrf: str | None = None, admin: bool = False):
        """The annotator the cookie belongs to; Refused when there is none, the CSRF token is wrong (for a
        form, `csrf` given) or an admin is needed."""
        token = request.cookies.get(COOKIE)
        person = store.annotator_by_token(engine, token)
        if person is None:
            raise store.Refused(401, "Open your personal link first (ask the project admin for one).")
        if csrf is not None and not hmac.compare_digest(csrf.encode(), csrf_for(token).encode()):
            raise store.Refused(403, "This form's security token is not valid; reload the page and try again.")
        if admin and not person.is_admin:
            raise store.Refused(403, "This page is for the project admin only.")
        return person

    @app.exception_handler(store.Refused)
    async def refused(request: Request, e: store.Refused):
        return page("message.html", e.status, title="Not done", message=e.message)

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, e: RequestValidationError):
        fields = ", ".join(str(err["loc"][-1]) for err in e.errors())
        return page("message.html", 400, title="Bad request", message=f"Missing or invalid form fields: {fields}.")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return page("message.html", e.status_code, title="Not found" if e.status_code == 404 else "Error",
                    message=str(e.detail))

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz():
        return "ok"

    def sign_in_form(request: Request, template: str, code: int = 200, **context) -> HTMLResponse:
        """A page with a sign-in form: its CSRF token is bound to a random pre-sign-in cookie (kept when the
        browser has one, so that two open sign-in pages both work), which another site can neither read nor
        send along with a cross-site POST (SameSite=Strict)."""
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if len(nonce) != 64 or any(c not in "0123456789abcdef" for c in nonce):
            nonce = secrets.token_hex(32)
        response = page(template, code, csrf=login_csrf_for(nonce), **context)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=24 * 3600, path="/", httponly=True, samesite="strict",
                            secure=secure_cookies)
        return response

    def login_csrf_for(nonce: str) -> str:
        return hmac.new(secret, b"login:" + nonce.encode(), hashlib.sha256).hexdigest()

    def home(person) -> str:
        return "/admin" if person.is_admin else "/"

    @app.get("/login")
    def login_link(request: Request, token: str = ""):
        """A personal link: shows whose link it is and a button that signs in (a POST). It signs nobody in by
        itself, so a link planted by another site can not swap the browser's annotator."""
        person = store.annotator_by_token(engine, token)
        if person is None:
            raise store.Refused(403, "This link is not valid (it may have been replaced by a new one).")
        current = store.annotator_by_token(engine, request.cookies.get(COOKIE))
        if current is not None and current.id == person.id:  # signed in already as this link's annotator
            return RedirectResponse(home(person), status_code=303)
        return sign_in_form(request, "confirm.html", title="Sign in", name=person.name, token=token,
                            current=None if current is None else current.name)

    @app.post("/login")
    def login_form(request: Request, token: str = Form(""), csrf: str = Form("")):
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(csrf.encode(), login_csrf_for(nonce).encode()):
            raise store.Refused(403, "This sign-in form's security token is not valid (or the form did not come "
                                     "from this site); open your personal link again, or reload the sign-in page.")
        token = token.strip()
        person = store.annotator_by_token(engine, token)
        if person is None:
            raise store.Refused(403, "This token is not valid (it may have been replaced by a new one).")
        response = RedirectResponse(home(person), status_code=303)
        response.set_cookie(COOKIE, token, max_age=90 * 24 * 3600, httponly=True, samesite="lax",
                            secure=secure_cookies)
        response.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict", secure=secure_cookies)
        return response

    @app.get("/", response_class=HTMLResponse)
    def task_page(request: Request):
        person = store.annotator_by_token(engine, request.cookies.get(COOKIE))
        if person is None:
            return sign_in_form(request, "login.html", title="Sign in", expired=COOKIE in request.cookies)
        task = store.next_task(engine, person.id, timeout_s)
        progress = store.progress(engine, person.id, timeout_s)
        context = {"person": person, "progress": progress, "csrf": csrf_for(request.cookies[COOKIE]), "task": task,
                   "confidence": store.CONFIDENCE, "max_reason": store.MAX_REASON_CHARS}
        if task is None:
            return page("done.html", title="All done", **context)
        return page(f"{task.kind}.html", title="Label", **context)

    @app.post("/vote")
    def vote(request: Request, nonce: str = Form(), csrf: str = Form(), choice: str = Form(),
             confidence: str = Form(""), reason: str = Form("")):
        person = annotator(request, csrf=csrf)
        if confidence not in ("", "1", "2", "3"):
            raise store.Refused(400, "confidence must be 1, 2 or 3")
        store.submit_vote(engine, person.id, nonce, choice, confidence=int(confidence) if confidence else None,
                          reason=reason, timeout_s=timeout_s)
        return RedirectResponse("/", status_code=303)

    @app.post("/skip")
    def skip(request: Request, nonce: str = Form(), csrf: str = Form()):
        person = annotator(request, csrf=csrf)
        store.skip_task(engine, person.id, nonce)
        return RedirectResponse("/", status_code=303)

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request):
        person = annotator(request, admin=True)
        return page("admin.html", title="Admin", person=person, status=store.status(engine),
                    csrf=csrf_for(request.cookies[COOKIE]), base_url=base_url)

    @app.post("/admin/invite", response_class=HTMLResponse)
    def admin_invite(request: Request, csrf: str = Form(), name: str = Form(), admin: str = Form("")):
        person = annotator(request, csrf=csrf, admin=True)
        try:
            token = store.invite(engine, name, admin=admin == "on")
        except AlignkitError as e:
            raise store.Refused(400, str(e)) from None
        # the link is built from the configured address only: the request's Host header is the client's to choose
        link = f"{base_url}/login?token={token}" if base_url else None
        return page("invited.html", title="Invited", person=person, name=name.strip(), link=link, token=token)

    return app
