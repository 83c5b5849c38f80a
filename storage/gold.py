"""Gold pairs: pairs with a known answer, mixed into every annotator's queue to measure them.

A gold pair is a `Pair` with route `gold` (a queue of its own, storage/queue.py: shown at
`labeling.gold_rate`, each at most once to a user, never done) and a `Gold` row with its answer.
It is imported (`add_gold_pairs`: its prompt, two responses, a pair with strategy `gold`) or an
existing pair marked by an admin (`mark_gold`, which keeps its route, status and overlap to put
back on `remove_gold`).

An annotator's gold accuracy is the share of their human labels on gold pairs, made since the pair
became gold, that choose its answer. The rule that flags one is `GoldRule`: their running accuracy
falls under `labeling.min_gold_accuracy` at any point once they have `labeling.min_gold_seen` such
labels, counting from `User.gold_since`. A flag stays until an admin lifts it (which sets
`gold_since`, so the count starts afresh). With
`labeling.gold_filter` on, a flagged annotator's labels are left out of DPO data, the proxy's
refit, the export and the iteration's quota (`storage.preferences`, `crud.label_counts`, through
`GoldRule.filtering`), and the pairs they labeled go back to the queue for one more label each
(`requeue_flagged`), so the data they would have given is made by others.

Gold labels are never preference data: the readers of preferences leave route `gold` out
(`models.NOT_PREFERENCE_ROUTES`), so a gold answer never reaches DPO as an ordinary pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.crud import Conflict, NotFound, PromptIn, add_prompts, prompt_hash
from storage.models import (
    GOLD_OVERLAP,
    Choice,
    Gold,
    GoldSource,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Prompt,
    Response,
    Route,
    User,
    utcnow,
)

if TYPE_CHECKING:
    from storage.settings import LabelingSettings

# The routes a pair may have to be marked as gold: preference pairs (evaluation pairs are votes).
MARKABLE_ROUTES = (Route.human, Route.audit, Route.proxy)


@dataclass(frozen=True)
class GoldRule:
    """When gold accuracy flags an annotator (`labeling.min_gold_accuracy`, `min_gold_seen`)."""

    min_accuracy: float
    min_seen: int

    @classmethod
    def of(cls, labeling: LabelingSettings) -> GoldRule:
        return cls(labeling.min_gold_accuracy, labeling.min_gold_seen)

    @classmethod
    def filtering(cls, labeling: LabelingSettings) -> GoldRule | None:
        """The rule whose flagged annotators the preference readers leave out; None with
        `labeling.gold_filter` off (everyone's labels count)."""
        return cls.of(labeling) if labeling.gold_filter else None

    def flags(self, seen: int, correct: int) -> bool:
        """Whether a running gold accuracy of correct / seen is under the bar, once it counts."""
        # rounded: 0.8 * 10 is 8.000000000000002, and 8 right of 10 is no flag
        return seen >= self.min_seen and correct < round(self.min_accuracy * seen, 9)

    def first_flag(self, history: Sequence[bool]) -> int | None:
        """How many gold labels in (1-based) the running accuracy over `history` (right or not,
        oldest first) first fell under the bar; None: never. A flag stays until an admin lifts
        it, whatever the later labels: a careless stretch is not washed out by care after it."""
        right = 0
        for n, ok in enumerate(history, 1):
            right += ok
            if self.flags(n, right):
                return n
        return None

    def as_dict(self) -> dict[str, float | int]:
        return {"min_gold_accuracy": self.min_accuracy, "min_gold_seen": self.min_seen}


@dataclass(frozen=True)
class GoldIn:
    prompt: PromptIn
    a: str
    b: str
    answer: Choice


@dataclass(frozen=True)
class GoldStanding:
    """One annotator's gold figures. `seen`/`correct`: every gold label of theirs; `counted` /
    `counted_correct`: those since `since` (the flag's last lift), which may flag them."""

    user_id: int
    name: str
    seen: int
    correct: int
    counted: int
    counted_correct: int
    since: datetime | None
    flagged_at: int | None  # the counted gold label that flagged them; None: not flagged

    @property
    def flagged(self) -> bool:
        return self.flagged_at is not None

    @property
    def accuracy(self) -> float | None:
        return round(self.correct / self.seen, 4) if self.seen else None


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def add_gold_pairs(
    *, session: Session, items: Iterable[GoldIn], user_id: int | None = None
) -> tuple[int, int]:
    """Store imported gold pairs (prompt, two responses, a gold pair queued for everyone, its
    answer); one already stored (same prompt and texts, in either order) or repeated is skipped.
    Flushes, never commits. Returns (added, skipped)."""
    items = list(items)
    add_prompts(session=session, prompts=[item.prompt for item in items])
    hashes = {prompt_hash(i.prompt.text, i.prompt.messages) for i in items}
    prompt_ids: dict[str, int] = {}
    seen: set[tuple[int, frozenset[str]]] = set()
    hash_list = sorted(hashes)
    resp_a, resp_b = aliased(Response), aliased(Response)
    for start in range(0, len(hash_list), 500):
        chunk = hash_list[start : start + 500]
        query = sa.select(Prompt.content_hash, Prompt.id).where(Prompt.content_hash.in_(chunk))
        found = dict(session.execute(query).all())
        prompt_ids.update(found)
        existing = (
            sa.select(Pair.prompt_id, resp_a.text, resp_b.text)
            .join(Gold, Gold.pair_id == Pair.id)
            .join(resp_a, resp_a.id == Pair.response_a_id)
            .join(resp_b, resp_b.id == Pair.response_b_id)
            .where(Pair.prompt_id.in_(list(found.values())))
        )
        for prompt_id, a, b in session.execute(existing):
            seen.add((prompt_id, frozenset((_text_key(a), _text_key(b)))))
    added = 0
    for item in items:
        if item.a == item.b:
            raise ValueError("a gold pair needs two different responses")
        prompt_id = prompt_ids[prompt_hash(item.prompt.text, item.prompt.messages)]
        key = (prompt_id, frozenset((_text_key(item.a), _text_key(item.b))))
        if key in seen:
            continue
        seen.add(key)
        responses = [
            Response(prompt_id=prompt_id, text=text, sampling={"source": "gold"})
            for text in (item.a, item.b)
        ]
        session.add_all(responses)
        session.flush()
        pair = Pair(
            prompt_id=prompt_id,
            response_a_id=responses[0].id,
            response_b_id=responses[1].id,
            strategy=PairStrategy.gold,
            route=Route.gold,
            status=PairStatus.queued,
            overlap=GOLD_OVERLAP,
        )
        session.add(pair)
        session.flush()
        session.add(Gold(pair_id=pair.id, answer=Choice(item.answer), created_by=user_id))
        added += 1
    session.flush()
    return added, len(items) - added


def mark_gold(*, session: Session, pair_id: int, answer: Choice | str, user_id: int | None) -> Gold:
    """Make an existing preference pair a gold pair with `answer`: from now on it is queued for
    every annotator who has not had it, and its labels (those made from now on) measure them.
    Its labels so far stay, no longer preference data. Flushes."""
    answer = Choice(answer)
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFound(f"no pair {pair_id}")
    if session.get(Gold, pair_id) is not None:
        raise Conflict(f"pair {pair_id} is a gold pair already")
    if pair.route not in MARKABLE_ROUTES:
        raise Conflict(f"pair {pair_id} is an evaluation pair: only preference pairs become gold")
    if pair.status == PairStatus.discarded:
        raise Conflict(f"pair {pair_id} was withdrawn")
    gold = Gold(
        pair_id=pair_id,
        answer=answer,
        source=GoldSource.marked,
        former_route=pair.route,
        former_status=pair.status,
        former_overlap=pair.overlap,
        created_by=user_id,
    )
    pair.route, pair.status, pair.overlap = Route.gold, PairStatus.queued, GOLD_OVERLAP
    session.add_all([pair, gold])
    session.flush()
    return gold


def remove_gold(*, session: Session, pair_id: int) -> None:
    """Undo a gold pair: a marked one gets its route, status and overlap back (its labels count
    as preferences again); an imported one is withdrawn (discarded, kept for history). Its
    labels no longer count toward anyone's gold accuracy. Flushes."""
    gold = session.get(Gold, pair_id)
    if gold is None:
        raise NotFound(f"pair {pair_id} is no gold pair")
    pair = session.get(Pair, pair_id)
    if gold.former_route is not None:
        pair.route = gold.former_route
        pair.overlap = gold.former_overlap or 1
        done = pair.n_labels >= pair.overlap and gold.former_status == PairStatus.queued
        pair.status = PairStatus.done if done else gold.former_status
    else:
        pair.status = PairStatus.discarded
    session.add(pair)
    session.delete(gold)
    session.flush()


def gold_answers(*, session: Session) -> dict[int, Choice]:
    """{pair id: answer} of every gold pair."""
    return {
        pid: Choice(answer) for pid, answer in session.execute(sa.select(Gold.pair_id, Gold.answer))
    }


_RIGHT = Label.choice == Gold.answer


def gold_standing(*, session: Session, rule: GoldRule) -> list[GoldStanding]:
    """Every annotator with a gold label, by name: their gold figures and whether `rule` flags
    them (`GoldRule.first_flag` over their gold labels since `User.gold_since`). One query over
    the gold labels (a gold_rate share of all labels), ordered as they were made."""
    query = (
        sa.select(User.id, User.name, User.gold_since, Label.created_at, _RIGHT)
        .select_from(Label)
        .join(Gold, Gold.pair_id == Label.pair_id)
        .join(User, User.id == Label.user_id)
        .where(Label.source == LabelSource.human, Label.created_at >= Gold.created_at)
        .order_by(User.name, Label.created_at, Label.id)
    )
    rows: dict[int, tuple[str, datetime | None, list[bool], list[bool]]] = {}
    for uid, name, since, created, right in session.execute(query):
        _, _, every, counted = rows.setdefault(uid, (name, since, [], []))
        every.append(bool(right))
        if since is None or created >= since:
            counted.append(bool(right))
    return [
        GoldStanding(
            user_id=uid,
            name=name,
            seen=len(every),
            correct=sum(every),
            counted=len(counted),
            counted_correct=sum(counted),
            since=since,
            flagged_at=rule.first_flag(counted),
        )
        for uid, (name, since, every, counted) in rows.items()
    ]


def flagged_annotators(*, session: Session, rule: GoldRule | None) -> set[int]:
    """Ids of the annotators `rule` flags (None: nobody)."""
    if rule is None:
        return set()
    return {s.user_id for s in gold_standing(session=session, rule=rule) if s.flagged}


def gold_history(*, session: Session, user_id: int) -> list[bool]:
    """Whether each of the user's gold labels chose the answer, oldest first (all of them, the
    flag's lifts aside): how their running accuracy went."""
    query = (
        sa.select(_RIGHT)
        .select_from(Label)
        .join(Gold, Gold.pair_id == Label.pair_id)
        .where(
            Label.user_id == user_id,
            Label.source == LabelSource.human,
            Label.created_at >= Gold.created_at,
        )
        .order_by(Label.created_at, Label.id)
    )
    return [bool(right) for (right,) in session.execute(query)]


def requeue_flagged(*, session: Session, rule: GoldRule | None) -> int:
    """Send the preference pairs the annotators `rule` flags have labeled (since the last time
    this did) back to the queue for one more label each: overlap + 1, queued again; being claimed
    in order (labeled pairs first), they are labeled again before fresh ones. Returns how many
    pairs. Flushes."""
    if rule is None:
        return 0
    requeued = 0
    for standing in gold_standing(session=session, rule=rule):
        if not standing.flagged:
            continue
        user = session.get(User, standing.user_id)
        query = (
            sa.select(Label.pair_id, Label.created_at)
            .join(Pair, Pair.id == Label.pair_id)
            .where(
                Label.user_id == user.id,
                Label.source == LabelSource.human,
                Pair.route.in_((Route.human, Route.audit)),
                Pair.status != PairStatus.discarded,
            )
        )
        if user.gold_requeued_at is not None:
            query = query.where(Label.created_at > user.gold_requeued_at)
        rows = session.execute(query).all()
        if not rows:
            continue
        pair_ids = sorted({pair_id for pair_id, _ in rows})
        for start in range(0, len(pair_ids), 500):
            session.execute(
                sa.update(Pair)
                .where(Pair.id.in_(pair_ids[start : start + 500]))
                .values(overlap=Pair.overlap + 1, status=PairStatus.queued)
            )
        user.gold_requeued_at = max(created for _, created in rows)
        session.add(user)
        requeued += len(pair_ids)
    session.flush()
    return requeued


def lift_flag(*, session: Session, user_id: int, now: datetime | None = None) -> User:
    """An admin lifts an annotator's flag: their gold accuracy that may flag them counts from
    now on, so their labels count again until `min_gold_seen` new gold labels say otherwise."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    user.gold_since = now or utcnow()
    session.add(user)
    session.flush()
    return user


def gold_counts(*, session: Session) -> dict[str, int]:
    """{pairs: gold pairs waiting to be shown, labels: labels on them since they became gold}."""
    pairs = session.execute(
        sa.select(sa.func.count(Gold.pair_id))
        .join(Pair, Pair.id == Gold.pair_id)
        .where(Pair.status == PairStatus.queued)
    ).scalar_one()
    labels = session.execute(
        sa.select(sa.func.count(Label.id))
        .join(Gold, Gold.pair_id == Label.pair_id)
        .where(Label.source == LabelSource.human, Label.created_at >= Gold.created_at)
    ).scalar_one()
    return {"pairs": pairs, "labels": labels}
