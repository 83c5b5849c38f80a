"""Rewrites: an annotator edits a response into a better one.

The edit is stored as a new `Response` on the same prompt, linked to the one it came from
(`edited_from_id`, `sampling` {"source": "human_edit", "edited_by": user id}), and a decided pair
in which it is preferred: strategy `edit`, route human, status done, the edit as response a, the
original as b, and the editor's human label choosing a. It is preference data like any decided
pair (DPO, the export, whose `strategy` column marks it "edit", and the proxy's refit), in the
iteration of the pair it was made on. One edit per user and response: a repeated submit adds
nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from storage.crud import Conflict, NotFound
from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Response,
    Route,
    utcnow,
)
from storage.text import refuse_nul

MAX_REWRITE_CHARS = 100_000


def check_rewrite(text: object) -> str:
    """The edited text, or ValueError naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("rewrite: the edited reply is empty")
    if len(text) > MAX_REWRITE_CHARS:
        raise ValueError(f"rewrite: at most {MAX_REWRITE_CHARS:,} characters (got {len(text):,})")
    refuse_nul("rewrite", text)
    return text.strip()


def add_rewrite(
    *, session: Session, pair_id: int, user_id: int, side: Choice | str, text: str
) -> Pair | None:
    """Store `user_id`'s rewrite of the pair's response `side` (a or b) and the pair preferring
    it; None when this user stored a rewrite of that response before. Flushes."""
    text = check_rewrite(text)
    side = Choice(side)
    if side not in (Choice.a, Choice.b):
        raise ValueError(f"rewrite: side {side!r}: a or b")
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFound(f"no pair {pair_id}")
    if pair.route in NOT_PREFERENCE_ROUTES:
        raise Conflict(f"pair {pair_id} is a {pair.route} pair: its replies are not rewritten")
    original_id = pair.response_a_id if side == Choice.a else pair.response_b_id
    original = session.get(Response, original_id)
    if text == original.text.strip():
        raise ValueError("rewrite: the same text as the reply it edits")
    before = session.execute(
        sa.select(Response.id).where(
            Response.edited_from_id == original_id,
            Response.sampling["edited_by"].as_integer() == user_id,
        )
    ).first()
    if before is not None:
        return None
    edited = Response(
        prompt_id=pair.prompt_id,
        policy_id=None,
        iteration_id=original.iteration_id,
        text=text,
        sampling={"source": "human_edit", "edited_by": user_id},
        edited_from_id=original_id,
    )
    session.add(edited)
    session.flush()
    rewrite = Pair(
        prompt_id=pair.prompt_id,
        response_a_id=edited.id,
        response_b_id=original_id,
        iteration_id=pair.iteration_id,
        strategy=PairStrategy.edit,
        route=Route.human,
        status=PairStatus.done,
        overlap=1,
        n_labels=1,
    )
    session.add(rewrite)
    session.flush()
    session.add(
        Label(
            pair_id=rewrite.id,
            user_id=user_id,
            source=LabelSource.human,
            choice=Choice.a,
            created_at=utcnow(),
        )
    )
    session.flush()
    return rewrite
