"""Preferences: the labels of each pair aggregated into (prompt, chosen, rejected) rows.

One rule decides a pair, for DPO training and the dataset export alike:

- Only labels from the selected `sources` count. When a pair has labels from several of them, the
  most trusted source decides alone: human, then seed, then proxy (an audited pair's human
  labels overrule the proxy's). `source` in the row names it.
- An admin's decision on a pair whose labels disagree (source `review`, storage/review.py)
  counts with the human labels and decides over them: `source` is then "review".
- With `annotators` given, only those users' human labels count (proxy and seed labels have no
  annotator, so such rows need a human label by one of them).
- The choice with a strict plurality among the counted labels (a, b, tie, both_bad) decides:
  a or b gives a row with that response chosen; a tie, both_bad or a draw (no strict plurality,
  e.g. one a and one b) gives no row. Those labels stay in the label table.
- `agreement` is the share of the counted labels that chose the winner (1.0 for a single label).
- Discarded pairs are left out; queued pairs count with the labels they have so far.
- Evaluation pairs (route `eval`: two policy versions, see storage/evaluation.py) are never
  preferences: their votes rate versions, and neither DPO, the export nor the proxy reads them.
  Nor are gold pairs (route `gold`, storage/gold.py): their labels measure the annotators.
- With `gold` given (`GoldRule.filtering`: `labeling.gold_filter` on), the human labels of the
  annotators it flags (gold accuracy too low) do not count, as if they had not labeled.
- With `criterion` given (one of `labeling.criteria`, `dpo.criterion`), each label's judgment on
  that criterion (a, b or tie) stands for its overall choice, and labels without one do not count.
- `criteria` in the row: for each criterion judged by the counted labels, their strict plurality
  about the row's pair ("chosen", "rejected" or "tie"; none without a plurality).

Seed pairs (imported preference datasets, `add_seed_preferences`) belong to no iteration: their
`iteration` is None, so an `iterations` filter leaves them out unless `with_seed` is set (the
first iteration's DPO reads them so under `loop.data_scope = "latest"`), and `iterations=None`
(everything, as DPO training reads it by default) includes them. Each is
stored as its prompt, two responses with no policy (a = chosen, b = rejected), a pair with
strategy `seed` and status `done`, and one label with source `seed` choosing a.

The proxy's refits read the labels themselves (`proxy_labels`), not these rows: a Bradley–Terry
fit learns from each comparison a person made, so for the proxy
- every label is one comparison: a pair labeled by three annotators gives three, a 2–1 split
  gives both directions, with no plurality, no draw and no agreement threshold;
- a tie is a comparison too (P = 0.5, in labeling/proxy.py); both_bad says nothing about the order
  and gives none;
- the sources are always `PROXY_SOURCES`: those of `SOURCE_PRECEDENCE` but proxy, so the proxy
  never learns from its own labels (on an audited pair its human labels count, as above), and a
  pair's human and seed labels both count (no precedence between the two);
- there are no iteration, annotator or split filters, and the labels on discarded pairs count too
  (a withdrawn pair's labels still compare two texts); the flagged annotators' labels are left
  out as above (`gold`).

`iter_preferences` streams with keyset pagination (``pair.id > last ORDER BY pair.id LIMIT n``)
over plain column rows, so memory stays flat however many pairs there are, on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.crud import PromptIn, add_prompts, prompt_hash
from storage.gold import GoldRule, flagged_annotators
from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Choice,
    Iteration,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Policy,
    Prompt,
    Response,
    Route,
    Split,
    Suggestion,
    User,
)
from storage.pairs import LabeledPair, labeled_pairs
from storage.text import may_exist

# Which source decides a pair that has labels from several (a review only when human is selected).
SOURCE_PRECEDENCE = (LabelSource.review, LabelSource.human, LabelSource.seed, LabelSource.proxy)
# The sources whose labels the proxy fits on: every one but its own.
PROXY_SOURCES = tuple(source for source in SOURCE_PRECEDENCE if source != LabelSource.proxy)
_PRECEDENCE = tuple(source.value for source in SOURCE_PRECEDENCE)
ALL_SOURCES = ("human", "proxy", "seed")
_AB = frozenset({Choice.a.value, Choice.b.value})


def _raw(column):
    """Read an enum column as its plain string: no per-row enum conversion on the hot path."""
    return sa.type_coerce(column, sa.String)


@dataclass(frozen=True)
class PreferenceRow:
    pair_id: int
    prompt: str  # the prompt text (for chat prompts: the last user turn)
    messages: list[dict[str, str]] | None  # the prompt as chat messages, when stored so
    chosen: str
    rejected: str
    iteration: int | None  # k of the pair's iteration; None for seed data
    policy_version: int | None  # the policy that sampled the responses; None for seed data
    strategy: str
    source: str  # human | proxy | seed: the source whose labels decided
    annotators: list[str]  # names of the users whose labels counted (empty for proxy, seed)
    agreement: float  # share of counted labels agreeing with the majority
    proxy_p: float | None  # the proxy's P(chosen > rejected) from its latest suggestion
    # {criterion: "chosen" | "rejected" | "tie"}: the counted labels' judgments (module notes)
    criteria: dict[str, str] = field(default_factory=dict)


def decide(choices: Iterable[str]) -> tuple[str, float] | None:
    """The strict-plurality choice and its share, or None when there is none or it is no a/b."""
    counts: dict[str, int] = {}
    for choice in choices:
        counts[choice] = counts.get(choice, 0) + 1
    if not counts:
        return None
    if len(counts) == 1:  # the common case: unanimous
        ((top, _),) = counts.items()
        return (top, 1.0) if top in _AB else None
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    top, n_top = ranked[0]
    if ranked[1][1] == n_top or top not in _AB:
        return None  # a draw, or a tie / both_bad majority
    return top, n_top / sum(counts.values())


def iter_preferences(
    *,
    session: Session,
    iterations: list[int] | None = None,
    sources: Iterable[str] = ALL_SOURCES,
    min_agreement: float = 0.0,
    annotators: list[str] | None = None,
    split: Split | str | None = None,
    with_seed: bool = False,
    gold: GoldRule | None = None,
    criterion: str | None = None,
    batch_size: int = 1000,
) -> Iterator[PreferenceRow]:
    """Stream the decided pairs in pair-id order, `batch_size` pairs per query. With
    `iterations` given, `with_seed` keeps the seed pairs (no iteration) too; with `gold`, the
    labels of the annotators it flags do not count."""
    sources = [LabelSource(s) for s in sources]
    if not sources:
        raise ValueError("sources: select at least one of human, proxy, seed")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if annotators is not None and LabelSource.human not in sources:
        return  # only human labels have annotators
    split = Split(split) if split is not None else None

    if LabelSource.human in sources:
        sources.append(LabelSource.review)
    label_filter = [Label.source.in_(sources)]
    if annotators is not None:
        label_filter = [
            Label.source == LabelSource.human,
            Label.user_id.in_(
                sa.select(User.id).where(User.name.in_([n for n in annotators if may_exist(n)]))
            ),
        ]
    label_filter += _not_flagged(session, gold)

    resp_a, resp_b = aliased(Response), aliased(Response)
    pairs_query = (
        sa.select(
            Pair.id,
            _raw(Pair.strategy),
            Prompt.text,
            _raw(Prompt.messages),
            resp_a.text,
            resp_b.text,
            Iteration.k,
            Policy.version,
        )
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(resp_a, resp_a.id == Pair.response_a_id)
        .join(resp_b, resp_b.id == Pair.response_b_id)
        .outerjoin(Iteration, Iteration.id == Pair.iteration_id)
        .outerjoin(Policy, Policy.id == resp_a.policy_id)
        .where(
            Pair.status != PairStatus.discarded,
            Pair.route.not_in(NOT_PREFERENCE_ROUTES),
            sa.exists().where(Label.pair_id == Pair.id, *label_filter),
        )
        .order_by(Pair.id)
        .limit(batch_size)
    )
    if iterations is not None:
        in_iterations = Iteration.k.in_(list(iterations))
        if with_seed:
            in_iterations = sa.or_(in_iterations, Pair.iteration_id.is_(None))
        pairs_query = pairs_query.where(in_iterations)
    if split is not None:
        pairs_query = pairs_query.where(Prompt.split == split)

    # Core execution on the session's connection: plain tuples, no ORM result machinery.
    connection = session.connection()
    last_id = 0
    while True:
        batch = connection.execute(pairs_query.where(Pair.id > last_id)).all()
        if not batch:
            return
        first_id, last_id = batch[0][0], batch[-1][0]
        # a range, not an IN list of the ids: pairs in it that are not in the batch are ignored
        labels = _labels(connection, first_id, last_id, label_filter)
        proxy_p_a = _latest_suggestions(connection, first_id, last_id)
        for pair_id, strategy, text, messages, text_a, text_b, k, version in batch:
            decided = _decide_pair(labels.get(pair_id, []), criterion)
            if decided is None:
                continue
            winner, agreement, source, names, judged = decided
            if agreement < min_agreement:
                continue
            p_a = proxy_p_a.get(pair_id)
            a_wins = winner == "a"
            yield PreferenceRow(
                pair_id=pair_id,
                prompt=text,
                messages=_messages(messages),
                chosen=text_a if a_wins else text_b,
                rejected=text_b if a_wins else text_a,
                iteration=k,
                policy_version=version,
                strategy=strategy,
                source=source,
                annotators=names,
                agreement=agreement,
                proxy_p=None if p_a is None else (p_a if a_wins else 1.0 - p_a),
                criteria=_decide_criteria(judged, a_wins) if judged else {},
            )
        if len(batch) < batch_size:
            return


def _not_flagged(session: Session, gold: GoldRule | None) -> list:
    """The label condition that leaves out the flagged annotators' labels (none: no condition)."""
    flagged = flagged_annotators(session=session, rule=gold)
    if not flagged:
        return []
    return [sa.or_(Label.user_id.is_(None), Label.user_id.not_in(sorted(flagged)))]


def _messages(value: Any) -> list[dict[str, str]] | None:
    # read as text (SQLite) or as JSON already parsed by the driver (PostgreSQL)
    if value is None or value == "null":
        return None
    return json.loads(value) if isinstance(value, str) else value


# (source, choice, annotator name, criteria as read: None, JSON text, or a dict on PostgreSQL)
_LabelRow = tuple[str, str, str | None, Any]


def _labels(
    connection: sa.Connection, first_id: int, last_id: int, label_filter: list
) -> dict[int, list[_LabelRow]]:
    query = (
        sa.select(
            Label.pair_id,
            _raw(Label.source),
            _raw(Label.choice),
            User.name,
            _raw(Label.criteria),
        )
        .outerjoin(User, User.id == Label.user_id)
        .where(Label.pair_id.between(first_id, last_id), *label_filter)
        .order_by(Label.id)
    )
    labels: dict[int, list[_LabelRow]] = defaultdict(list)
    for pair_id, source, choice, name, criteria in connection.execute(query).all():
        labels[pair_id].append((source, choice, name, criteria))
    return labels


def _criteria(value: Any) -> dict[str, str] | None:
    """A label's criteria as read (JSON text on SQLite, parsed on PostgreSQL)."""
    if value is None or value == "null":
        return None
    return json.loads(value) if isinstance(value, str) else value


def _decide_pair(
    labels: list[_LabelRow], criterion: str | None = None
) -> tuple[str, float, str, list[str], list[dict[str, str]]] | None:
    """(winner, agreement, source, annotators, the counted labels' criteria) or None."""
    if criterion is not None:  # judged on the criterion: it stands for the choice
        labels = [
            (source, judged[criterion], name, judged)
            for source, _, name, raw in labels
            if (judged := _criteria(raw)) and criterion in judged
        ]
    if not labels:
        return None
    if len(labels) == 1:  # the common case
        source, choice, name, raw = labels[0]
        if choice not in _AB:
            return None
        judged = _criteria(raw)
        return choice, 1.0, source, [] if name is None else [name], [judged] if judged else []
    present = {label[0] for label in labels}
    source = next(s for s in _PRECEDENCE if s in present)
    counted = [(choice, name, raw) for s, choice, name, raw in labels if s == source]
    decided = decide([choice for choice, _, _ in counted])
    if decided is None:
        return None
    names = [name for _, name, _ in counted if name is not None]
    judged = [c for _, _, raw in counted if (c := _criteria(raw))]
    return decided[0], decided[1], source, names, judged


_RELATIVE = {True: {"a": "chosen", "b": "rejected"}, False: {"a": "rejected", "b": "chosen"}}


def _decide_criteria(judged: list[dict[str, str]], a_wins: bool) -> dict[str, str]:
    """Each criterion's strict plurality among the counted labels' judgments, about the row."""
    out = {}
    for name in sorted({name for criteria in judged for name in criteria}):
        counts: dict[str, int] = defaultdict(int)
        for criteria in judged:
            if name in criteria:
                counts[criteria[name]] += 1
        ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
        if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
            out[name] = _RELATIVE[a_wins].get(ranked[0][0], ranked[0][0])
    return out


def _latest_suggestions(connection: sa.Connection, first_id: int, last_id: int) -> dict[int, float]:
    query = (
        sa.select(Suggestion.pair_id, Suggestion.p_a)
        .where(Suggestion.pair_id.between(first_id, last_id))
        .order_by(Suggestion.pair_id, Suggestion.created_at, Suggestion.id)
    )
    # later rows overwrite earlier ones: the latest suggestion per pair wins
    return {pair_id: p_a for pair_id, p_a in connection.execute(query).all()}


def proxy_labels(*, session: Session, gold: GoldRule | None = None) -> list[LabeledPair]:
    """The labels the proxy's refit learns from, one comparison each, oldest first: every label
    of `PROXY_SOURCES` with the texts it compared (how this differs from a decided pair: see the
    module notes), but those of the annotators `gold` flags."""
    return labeled_pairs(
        session=session,
        sources=PROXY_SOURCES,
        leave_out=flagged_annotators(session=session, rule=gold),
    )


# seed data


@dataclass(frozen=True)
class SeedPreferenceIn:
    prompt: PromptIn
    chosen: str
    rejected: str


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def add_seed_preferences(
    *, session: Session, items: Iterable[SeedPreferenceIn], chunk: int = 500
) -> tuple[int, int]:
    """Store imported preferences as seed pairs (see the module notes); flushes, never commits.

    A preference already stored (same prompt, chosen and rejected) or repeated in `items` is
    skipped. Returns (added, skipped)."""
    items = list(items)
    add_prompts(session=session, prompts=[item.prompt for item in items])
    hashes = list({prompt_hash(i.prompt.text, i.prompt.messages) for i in items})
    prompt_ids: dict[str, int] = {}
    for start in range(0, len(hashes), chunk):
        query = sa.select(Prompt.content_hash, Prompt.id).where(
            Prompt.content_hash.in_(hashes[start : start + chunk])
        )
        prompt_ids.update((key, pid) for key, pid in session.execute(query))

    seen: set[tuple[int, str, str]] = set()
    ids = list(prompt_ids.values())
    resp_a, resp_b = aliased(Response), aliased(Response)
    for start in range(0, len(ids), chunk):
        query = (
            sa.select(Pair.prompt_id, resp_a.text, resp_b.text)
            .join(resp_a, resp_a.id == Pair.response_a_id)
            .join(resp_b, resp_b.id == Pair.response_b_id)
            .where(
                Pair.strategy == PairStrategy.seed, Pair.prompt_id.in_(ids[start : start + chunk])
            )
        )
        for prompt_id, chosen, rejected in session.execute(query):
            seen.add((prompt_id, _text_key(chosen), _text_key(rejected)))

    new: list[tuple[int, SeedPreferenceIn]] = []
    for item in items:
        prompt_id = prompt_ids[prompt_hash(item.prompt.text, item.prompt.messages)]
        key = (prompt_id, _text_key(item.chosen), _text_key(item.rejected))
        if key not in seen:
            seen.add(key)
            new.append((prompt_id, item))

    sampling = {"source": "seed"}
    for start in range(0, len(new), chunk):
        part = new[start : start + chunk]
        responses = [
            (
                Response(prompt_id=pid, text=item.chosen, sampling=sampling),
                Response(prompt_id=pid, text=item.rejected, sampling=sampling),
            )
            for pid, item in part
        ]
        session.add_all([r for pair in responses for r in pair])
        session.flush()
        pairs = [
            Pair(
                prompt_id=pid,
                response_a_id=chosen.id,
                response_b_id=rejected.id,
                strategy=PairStrategy.seed,
                route=Route.human,
                status=PairStatus.done,
            )
            for (pid, _), (chosen, rejected) in zip(part, responses, strict=True)
        ]
        session.add_all(pairs)
        session.flush()
        labels = [Label(pair_id=p.id, source=LabelSource.seed, choice=Choice.a) for p in pairs]
        session.add_all(labels)
        session.flush()
        # flushed rows stay in the transaction; dropping them from the session keeps memory flat
        for row in [*labels, *pairs, *(r for pair in responses for r in pair)]:
            session.expunge(row)
    return len(new), len(items) - len(new)
