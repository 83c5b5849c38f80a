"""The web server: FastAPI with a login page, /healthz, and the Gradio views mounted.

Two Gradio apps: `/label/` (every signed-in user) and `/admin/` (admins). A gate in front of both
lets nothing through without a valid session cookie except the login page and /healthz; each
Gradio handler then checks the user and role again itself (`app.ui.guard`), because Gradio
endpoints are callable directly. Uploads: none into the labeling app, whose page has no file
input (Gradio's upload routes are there all the same), and at most MAX_ADMIN_UPLOAD_BYTES into
the admin app.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from string import Template
from urllib.parse import quote

import anyio
import gradio as gr
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.requests import HTTPConnection

from app import api
from app.auth import generate_password, hash_password, verify_password
from app.sessions import (
    COOKIE_NAME,
    MAX_AGE_SECONDS,
    load_or_create_secret,
    read_session,
    sign_session,
)
from app.throttle import SignInThrottle, client_address, sign_in_failed
from app.ui.guard import AppContext, current_user_by_id, report_database_outages
from app.unavailable import DatabaseUnavailable
from storage import crud
from storage.db import transaction
from storage.runtime import Runtime

UI_DIR = Path(__file__).parent / "ui"
LABEL_PATH = "/label"
ADMIN_PATH = "/admin"
# Reachable without a session. /api/v1 authenticates its own callers (API tokens).
PUBLIC_PATHS = frozenset({"/login", "/logout", "/healthz", "/favicon.ico"})
PUBLIC_PREFIXES = ("/api/v1/",)
# Prompt files an admin uploads; Gradio answers 413 above it, before writing the rest to disk.
MAX_ADMIN_UPLOAD_BYTES = 20 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Checked when the user does not exist, at the same cost, so timing tells nothing."""
    return hash_password(generate_password())


def safe_next(target: str | None) -> str:
    """Only same-site paths: no open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return LABEL_PATH + "/"
    return target


class SessionGate:
    """ASGI middleware: without a valid session, pages redirect to /login and the rest is 401.

    Under /admin it also reads the user's role from the database, so annotators never receive
    the admin app's page or config. Under /label it refuses every multipart body: that is how
    each of Gradio's routes that take files (upload, process_recording, component_server)
    receives one, and the labeling page sends none."""

    def __init__(self, app, *, ctx: AppContext):
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        data = read_session(self.ctx.secret, conn.cookies.get(COOKIE_NAME))
        wants_page = scope.get("method") == "GET" and "text/html" in conn.headers.get("accept", "")
        if data is None:
            if wants_page:
                target = "/login?next=" + quote(path, safe="/")
                return await RedirectResponse(target, status_code=303)(scope, receive, send)
            return await _deny(401, "not signed in")(scope, receive, send)
        if path == ADMIN_PATH or path.startswith(ADMIN_PATH + "/"):
            user = await anyio.to_thread.run_sync(current_user_by_id, self.ctx, data)
            if user is None or not user.is_admin:
                if wants_page:
                    return await RedirectResponse(LABEL_PATH + "/", status_code=303)(
                        scope, receive, send
                    )
                return await _deny(403, "admins only")(scope, receive, send)
        elif path == LABEL_PATH or path.startswith(LABEL_PATH + "/"):
            content_type = conn.headers.get("content-type", "").lstrip().lower()
            if content_type.startswith("multipart/"):
                return await _deny(403, "the labeling app takes no uploads")(scope, receive, send)
        return await self.app(scope, receive, send)


def _deny(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _login_page(
    *,
    error: str = "",
    next_path: str = "",
    name: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
):
    from html import escape

    page = Template((UI_DIR / "login.html").read_text()).substitute(
        error=f'<p class="error" role="alert">{escape(error)}</p>' if error else "",
        next=escape(safe_next(next_path)),
        name=escape(name),
    )
    return HTMLResponse(
        page, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _auth_dependency(ctx: AppContext, *, admin: bool):
    """Gradio's own check (username for gr.Request); the handlers check again."""

    def dependency(request: Request) -> str | None:
        data = read_session(ctx.secret, request.cookies.get(COOKIE_NAME))
        if data is None:
            return None
        if admin:
            user = current_user_by_id(ctx, data)
            return str(user.id) if user is not None and user.is_admin else None
        return str(data.user_id)

    return dependency


def create_app(rt: Runtime) -> FastAPI:
    """The whole web app for `rt`. The loop's scheduler is not part of it: `prefloop serve` runs
    it once beside the server, however many worker processes serve the app."""
    from app.ui.admin import build_admin
    from app.ui.annotate import build_annotate

    ctx = AppContext(rt=rt, secret=load_or_create_secret(rt.settings.data_dir))

    app = FastAPI(title="prefloop", docs_url=None, redoc_url=None)
    app.state.runtime = rt
    app.state.ctx = ctx
    app.state.throttle = SignInThrottle()  # failed sign-ins, of the login page and the API
    app.add_middleware(SessionGate, ctx=ctx)
    app.add_middleware(DatabaseUnavailable)  # outermost: a lost database is a 503, never a 500
    app.include_router(api.router)  # /api/v1: authenticates its callers by API token

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with transaction(rt.engine, readonly=True) as session:
                ok = crud.database_ok(session=session)
        except Exception:  # the probe reports; it does not crash
            ok = False
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @app.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(LABEL_PATH + "/", status_code=303)

    @app.get("/login")
    def login_form(next: str = "") -> HTMLResponse:
        return _login_page(next_path=next)

    @app.post("/login")
    def login(
        request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("")
    ):
        name = name.strip()
        throttle: SignInThrottle = request.app.state.throttle
        address = client_address(request)
        if wait := throttle.retry_after(address=address, name=name):
            return _login_page(
                error=f"Too many failed sign-ins. Try again in {wait} s.",
                next_path=next,
                name=name,
                status=429,
                headers={"Retry-After": str(wait)},
            )
        with transaction(rt.engine, readonly=True) as session:
            user = crud.get_user_by_name(session=session, name=name)
        if user is None:
            verify_password(_dummy_hash(), password)
            ok = False
        else:
            ok = verify_password(user.password_hash, password)
        if not ok:
            sign_in_failed(rt, throttle, via="login", address=address, name=name)
            return _login_page(
                error="Wrong user name or password.", next_path=next, name=name, status=401
            )
        throttle.succeeded(name=name)
        if not user.active:
            return _login_page(error="This account is disabled.", next_path=next, status=403)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            sign_session(ctx.secret, user_id=user.id, password_hash=user.password_hash),
            max_age=MAX_AGE_SECONDS,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.get("/logout")
    @app.post("/logout")
    def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
        return response

    theme = gr.themes.Soft(primary_hue="indigo")
    css = (UI_DIR / "style.css").read_text()
    head = f"<script>{(UI_DIR / 'shortcuts.js').read_text()}</script>"
    common = dict(
        footer_links=[], run_history=False, ssr_mode=False, theme=theme, css=css, head=head
    )
    # root_path: the file URLs Gradio returns from a direct (queue=False) event are built from
    # it; without it a mounted app's direct events link /gradio_api/file=... at the site root.
    label_blocks = report_database_outages(build_annotate(ctx))
    # Labeling events get their own small thread pool (Gradio makes one when max_threads is not
    # its default): on SQLite, 1 thread per worker gave 1.5-2x the submits/s of 40 (bench app).
    label_blocks.max_threads = rt.settings.server.label_threads
    gr.mount_gradio_app(
        app,
        label_blocks,
        path=LABEL_PATH,
        root_path=LABEL_PATH,
        auth_dependency=_auth_dependency(ctx, admin=False),
        **common,
    )
    gr.mount_gradio_app(
        app,
        report_database_outages(build_admin(ctx)),
        path=ADMIN_PATH,
        root_path=ADMIN_PATH,
        auth_dependency=_auth_dependency(ctx, admin=True),
        max_file_size=MAX_ADMIN_UPLOAD_BYTES,
        **common,
    )
    return app


def app_from_env() -> FastAPI:
    """One worker's app under `prefloop serve --workers N` (uvicorn's factory, in a spawned
    process): the runtime of PREFLOOP_DATA_DIR, no scheduler (it runs in the supervising process).
    Workers share nothing but the database and the data directory, which is all the views need."""
    from storage.runtime import open_runtime

    return create_app(open_runtime(Path(os.environ["PREFLOOP_DATA_DIR"])))
