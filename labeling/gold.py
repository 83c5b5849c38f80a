"""Gold pairs as admin actions: import, mark, unmark, lift a flag, and the annotators' standing.

Each action is one transaction with its audit entry (`via`: cli, api or admin), so the command
line, the JSON API and the admin view do the same thing. The data rules are storage/gold.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from storage import crud, gold
from storage.db import transaction
from storage.gold import GoldIn, GoldRule, GoldStanding
from storage.models import Choice
from storage.settings import LabelingSettings


def import_gold(
    *,
    engine: Engine,
    items: Sequence[GoldIn],
    user_id: int | None,
    via: str,
    file: str | None = None,
) -> tuple[int, int]:
    """Store gold pairs (duplicates skipped); returns (added, skipped). Audited."""
    with transaction(engine) as session:
        added, skipped = gold.add_gold_pairs(session=session, items=items, user_id=user_id)
        detail: dict[str, Any] = {"via": via, "added": added, "skipped": skipped}
        if file is not None:
            detail["file"] = file
        crud.record_audit(session=session, user_id=user_id, action="gold.import", detail=detail)
    return added, skipped


def mark(
    *, engine: Engine, pair_id: int, answer: Choice | str, user_id: int | None, via: str
) -> None:
    """Make a labeled pair gold with `answer` (storage.gold.mark_gold). Audited."""
    with transaction(engine) as session:
        gold.mark_gold(session=session, pair_id=pair_id, answer=answer, user_id=user_id)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="gold.mark",
            detail={"via": via, "pair_id": pair_id, "answer": str(Choice(answer))},
        )


def unmark(*, engine: Engine, pair_id: int, user_id: int | None, via: str) -> None:
    """Undo a gold pair (storage.gold.remove_gold). Audited."""
    with transaction(engine) as session:
        gold.remove_gold(session=session, pair_id=pair_id)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="gold.remove",
            detail={"via": via, "pair_id": pair_id},
        )


def lift(*, engine: Engine, name: str, user_id: int | None, via: str) -> None:
    """Lift an annotator's gold flag: their accuracy counts afresh from now. Audited."""
    with transaction(engine) as session:
        annotator = crud.get_user_by_name(session=session, name=name)
        if annotator is None:
            raise crud.NotFound(f"no user {name!r}")
        gold.lift_flag(session=session, user_id=annotator.id)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="gold.lift",
            detail={"via": via, "name": name},
        )


def standing(*, engine: Engine, labeling: LabelingSettings) -> list[GoldStanding]:
    """Every annotator with a gold label: accuracy, counts, whether they are flagged."""
    with transaction(engine, readonly=True) as session:
        return gold.gold_standing(session=session, rule=GoldRule.of(labeling))


def standing_record(s: GoldStanding, labeling: LabelingSettings) -> dict[str, Any]:
    """One annotator's standing as plain JSON (the CLI, the API)."""
    return {
        "name": s.name,
        "gold_seen": s.seen,
        "gold_correct": s.correct,
        "gold_accuracy": s.accuracy,
        "counted_since": None if s.since is None else s.since.isoformat(),
        "counted_seen": s.counted,
        "counted_correct": s.counted_correct,
        "flagged": s.flagged,
        "flagged_at": s.flagged_at,
        "left_out": s.flagged and labeling.gold_filter,
    }
