"""Labeling guidelines: Markdown written by an admin, kept as numbered versions (never edited); the
newest is in force. Each label records the version in force when it was made: the queue's submit
reads it in the label's own insert (`CURRENT_VERSION`), so it costs no statement of its own."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from storage.models import Guideline, User
from storage.text import refuse_nul

MAX_GUIDELINE_CHARS = 100_000

_GUIDELINE = Guideline.__table__
# The version in force, as a scalar subquery (NULL before the first): a label's guideline_version.
CURRENT_VERSION = sa.select(sa.func.max(_GUIDELINE.c.version)).scalar_subquery()
_CURRENT = (
    sa.select(_GUIDELINE.c.version, _GUIDELINE.c.text)
    .order_by(_GUIDELINE.c.version.desc())
    .limit(1)
)


def current(*, session: Session) -> tuple[int, str] | None:
    """(version, text) of the guidelines in force, or None before the first."""
    row = session.connection().execute(_CURRENT).first()
    return None if row is None else (row[0], row[1])


def publish(*, session: Session, text: str, user_id: int | None) -> Guideline:
    """A new version of the guidelines, in force from now. Refuses blank text, text over
    MAX_GUIDELINE_CHARS, a NUL character, and text equal to the version in force. Flushes."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: the guidelines are empty")
    if len(text) > MAX_GUIDELINE_CHARS:
        raise ValueError(f"text: at most {MAX_GUIDELINE_CHARS:,} characters (got {len(text):,})")
    refuse_nul("text", text)
    now = current(session=session)
    if now is not None and now[1] == text:
        raise ValueError(f"text: the same as version {now[0]}, in force already")
    guideline = Guideline(version=(now[0] if now else 0) + 1, text=text, created_by=user_id)
    session.add(guideline)
    session.flush()
    return guideline


def history(*, session: Session) -> list[tuple[int, str | None, object]]:
    """(version, author's name, created_at) of every version, newest first."""
    query = (
        sa.select(Guideline.version, User.name, Guideline.created_at)
        .outerjoin(User, User.id == Guideline.created_by)
        .order_by(Guideline.version.desc())
    )
    return [tuple(row) for row in session.execute(query)]


def get_version(*, session: Session, version: int) -> str | None:
    """The text of one version, None if there is no such version."""
    query = sa.select(Guideline.text).where(Guideline.version == version)
    return session.execute(query).scalar_one_or_none()
