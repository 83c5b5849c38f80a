"""Disagreement review as admin actions: the disputed pairs, and an admin's decision that settles
one for training and export (storage/review.py), audited with who decided and how (`via`: cli,
api or admin)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from storage import crud, review
from storage.db import transaction
from storage.models import Choice

MAX_NOTE_CHARS = 2000


def disputed(
    *, engine: Engine, limit: int = 50, offset: int = 0, include_settled: bool = False
) -> tuple[int, list[review.PairDetail]]:
    """(how many, a page of) the pairs whose human labels disagree."""
    with transaction(engine, readonly=True) as session:
        return review.disagreements(
            session=session, limit=limit, offset=offset, include_settled=include_settled
        )


def settle(
    *,
    engine: Engine,
    pair_id: int,
    choice: Choice | str,
    user_id: int | None,
    via: str,
    note: str | None = None,
) -> None:
    """An admin decides a pair (a, b, tie or both_bad about its stored a and b). Audited."""
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note: at most {MAX_NOTE_CHARS} characters (got {len(note)})")
    with transaction(engine) as session:
        review.settle(session=session, pair_id=pair_id, choice=choice, user_id=user_id, note=note)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="review.settle",
            detail={"via": via, "pair_id": pair_id, "choice": str(Choice(choice))},
        )


def detail_record(detail: review.PairDetail) -> dict[str, Any]:
    """A pair with its labels as plain JSON (the CLI, the API)."""
    return {
        "pair_id": detail.pair_id,
        "route": detail.route,
        "status": detail.status,
        "iteration_id": detail.iteration_id,
        "prompt": detail.prompt,
        "prompt_messages": detail.messages,
        "a": detail.a,
        "b": detail.b,
        "gold_answer": detail.gold_answer,
        "labels": [
            {
                "annotator": lab.annotator,
                "source": lab.source,
                "choice": lab.choice,
                "reason": lab.reason,
                "seconds": lab.seconds,
                "created_at": lab.created_at.isoformat(),
                "guideline_version": lab.guideline_version,
            }
            for lab in detail.labels
        ],
    }
