"""Who is calling: every Gradio handler asks here first.

Gradio endpoints can be called directly (gradio_client, curl) whatever the page hides, so each
handler checks the session itself. The user is read from the database on every call: disabling a
user, changing their role or their password takes effect at the next click.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr
from sqlmodel import Session

from app.sessions import COOKIE_NAME, SessionData, password_fingerprint, read_session
from app.unavailable import database_outage
from storage import crud, queue
from storage.db import UNAVAILABLE_ERRORS, transaction
from storage.models import Role
from storage.runtime import Runtime

# The labeling counter's queue size is counted anew for each click below this many pairs, and at
# most once a QUEUE_MEMO_SECONDS per server process above it (see AppContext.queue_stats).
QUEUE_MEMO_FROM = 5_000
QUEUE_MEMO_SECONDS = 1.0


@dataclass(frozen=True)
class AppContext:
    """What the UI's handlers need, handed to the view builders (no module globals)."""

    rt: Runtime
    secret: bytes
    # (time.monotonic(), count) of the last queue count
    _queue_memo: dict = field(default_factory=dict, compare=False, repr=False)

    def queue_stats(self, session: Session, user_id: int, holds_pair: bool | None) -> dict:
        """`queue.queue_stats` for the labeling counter, its queue count memoized.

        Counting walks an index over the whole queue: ~3 ms a click at 20k pairs, a fifth of
        the server's work per click there. From QUEUE_MEMO_FROM pairs on, one count serves this
        process for QUEUE_MEMO_SECONDS: a count in the thousands a second old reads the same,
        while a small queue, where one pair shows, is counted exactly every time (in the same
        statement as the user's own figures)."""
        now = time.monotonic()
        memo = self._queue_memo.get("last")
        fresh = (
            memo is not None and memo[1] >= QUEUE_MEMO_FROM and now - memo[0] < QUEUE_MEMO_SECONDS
        )
        stats = queue.queue_stats(
            session=session,
            user_id=user_id,
            queued_short=memo[1] if fresh else None,
            holds_pair=holds_pair,
        )
        if not fresh:
            self._queue_memo["last"] = (now, stats["queued_short"])
        return stats


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
    row = crud.user_check(session=session, user_id=data.user_id)
    if row is None:
        return None
    name, role, active, password_hash = row
    if not active or password_fingerprint(password_hash) != data.fingerprint:
        return None
    return CurrentUser(id=data.user_id, name=name, role=Role(role))


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


DATABASE_DOWN = (
    "The database cannot be reached right now, so nothing was saved or loaded. "
    "Try again in a few seconds."
)


def report_database_outages(blocks: gr.Blocks) -> gr.Blocks:
    """Every event handler of `blocks` answers a lost database with DATABASE_DOWN in the page
    (and a 503, see app.unavailable) instead of Gradio's bare error."""
    for block_fn in blocks.fns.values():
        block_fn.fn = _outage_aware(block_fn.fn)
    return blocks


def _outage_aware(fn: Callable) -> Callable:
    @functools.wraps(fn)  # Gradio reads the signature (gr.Request) through __wrapped__
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE_ERRORS as error:
            database_outage(error)
            raise gr.Error(DATABASE_DOWN, print_exception=False) from None

    return handler
