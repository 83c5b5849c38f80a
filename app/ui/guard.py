"""Who is calling: every Gradio handler asks here first.

Gradio endpoints can be called directly (gradio_client, curl) whatever the page hides, so each
handler checks the session itself. The user is read from the database on every call: disabling a
user, changing their role or their password takes effect at the next click.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gradio as gr
from sqlmodel import Session

from app.sessions import COOKIE_NAME, SessionData, password_fingerprint, read_session
from storage import crud
from storage.db import transaction
from storage.models import Role
from storage.runtime import Runtime
from storage.settings import Settings, with_overrides


@dataclass(frozen=True)
class AppContext:
    """What the UI's handlers need, handed to the view builders (no module globals)."""

    rt: Runtime
    secret: bytes
    # (overrides as JSON, settings): validating Settings costs ~5 ms, overrides rarely change
    _settings_memo: dict = field(default_factory=dict, compare=False, repr=False)

    def effective_settings(self, session: Session) -> Settings:
        """The settings with admins' run-time changes, read in the caller's transaction."""
        overrides = crud.get_overrides(session=session)
        key = json.dumps(overrides, sort_keys=True, default=str)
        memo = self._settings_memo.get("last")
        if memo is not None and memo[0] == key:
            return memo[1]
        settings = with_overrides(self.rt.settings, overrides) if overrides else self.rt.settings
        self._settings_memo["last"] = (key, settings)
        return settings


@dataclass(frozen=True)
class CurrentUser:
    id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin


class Refused(gr.Error):
    """Not logged in, disabled, or not allowed: shown in the page, raised to API clients."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


def session_cookie(request: gr.Request | None) -> str | None:
    if request is None:
        return None
    cookies = getattr(request, "cookies", None) or {}
    return dict(cookies).get(COOKIE_NAME)


def current_user(
    ctx: AppContext, request: gr.Request | None, session: Session | None = None
) -> CurrentUser | None:
    """The active user behind this request's session cookie, or None."""
    data = read_session(ctx.secret, session_cookie(request))
    return None if data is None else current_user_by_id(ctx, data, session)


def current_user_by_id(
    ctx: AppContext, data: SessionData, session: Session | None = None
) -> CurrentUser | None:
    """The session's user if still active and the password unchanged since sign-in; read in
    `session` when given (the caller's transaction), else in a read transaction of its own."""
    if session is None:
        with transaction(ctx.rt.engine, readonly=True) as own:
            return current_user_by_id(ctx, data, own)
    try:
        user = crud.get_user(session=session, user_id=data.user_id)
    except crud.NotFound:
        return None
    if not user.active or password_fingerprint(user.password_hash) != data.fingerprint:
        return None
    return CurrentUser(id=user.id, name=user.name, role=Role(user.role))


def require_user(
    ctx: AppContext,
    request: gr.Request | None,
    *,
    role: Role | None = None,
    session: Session | None = None,
) -> CurrentUser:
    """The caller, or Refused. `role=Role.admin` also refuses annotators. With `session`, the
    check reads in the caller's transaction (one transaction per click on the hot path)."""
    user = current_user(ctx, request, session)
    if user is None:
        raise Refused("Not signed in (or the session ended): reload the page to sign in.")
    if role == Role.admin and not user.is_admin:
        raise Refused("Admins only.")
    return user
