"""Publishing labeling guidelines as an admin action (storage/guidelines.py keeps the versions):
one transaction with its audit entry, the same from the command line, the API and the admin view."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from storage import crud, guidelines
from storage.db import transaction


def publish(*, engine: Engine, text: str, user_id: int | None, via: str) -> int:
    """A new version of the guidelines, in force from now; returns its number. Audited."""
    with transaction(engine) as session:
        guideline = guidelines.publish(session=session, text=text, user_id=user_id)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="guidelines.publish",
            detail={"via": via, "version": guideline.version, "chars": len(text)},
        )
        return guideline.version


def current(*, engine: Engine) -> tuple[int, str] | None:
    """(version, text) in force, or None before the first."""
    with transaction(engine, readonly=True) as session:
        return guidelines.current(session=session)
