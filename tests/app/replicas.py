"""Annotators spread over several `prefloop serve` replicas of one database, one replica killed
with kill -9 under load, and what the database holds afterwards (the replica test and
`python -m benchmarks replicas`).

Each annotator has a home replica (the replicas in turn, as a round-robin load balancer hands
them out) and labels through the JSON API (`POST /pairs/{id}/label?next=true`) or through the
labeling page's Gradio events, alternately. A request that finds its replica gone (refused,
reset, closed mid-answer) is sent again to another replica, as a load balancer's retry would:
submitting the same label twice stores it once, and a claim comes back as the pair the user
holds. A label is *acknowledged* when its client got the answer that it was saved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from storage.db import transaction
from storage.models import Label, Pair, Role
from tests.app.live_server import issue_tokens, seed_users
from tests.app.load_client import (
    CONNECTION_ERRORS,
    Connection,
    PageClient,
    cookie_header,
    label_events,
    login,
)


@dataclass(frozen=True)
class Annotator:
    name: str
    user_id: int
    token: str


def annotators_of(rt, names: list[str]) -> list[Annotator]:
    """New annotator users with these names, each with an API token."""
    ids = seed_users(rt, dict.fromkeys(names, Role.annotator))
    tokens = issue_tokens(rt, names)
    return [Annotator(n, ids[n], t) for n, t in zip(names, tokens, strict=True)]


@dataclass
class LoadResult:
    acknowledged: set[tuple[int, int]]  # (user id, pair id) the clients were told were saved
    seconds: float
    failovers: int  # requests sent again to another replica after theirs was gone


@dataclass(frozen=True)
class Integrity:
    acknowledged: int
    stored: int  # labels the annotators have in the database
    lost: int  # acknowledged, not stored: must be 0
    unacknowledged: int  # stored, never acknowledged: in flight when a replica died
    duplicates: int  # (pair, user) with more than one label: must be 0
    over_assigned: int  # pairs with more labels than their overlap: must be 0
    miscounted: int  # pairs whose label counter disagrees with their labels: must be 0

    def line(self) -> str:
        return (
            f"acknowledged {self.acknowledged}, stored {self.stored}, lost {self.lost}, "
            f"in flight at the kill {self.unacknowledged}, duplicates {self.duplicates}, "
            f"over-assigned {self.over_assigned}, miscounted {self.miscounted}"
        )


class _Client:
    """One annotator: its connection moves to the next replica when its replica is gone."""

    def __init__(self, urls: list[str], home: int, headers: dict[str, str]):
        self.urls, self.home, self.headers = urls, home, headers
        self.connection = Connection(urls[home], headers)
        self.failovers = 0

    async def send(self, attempt: Callable):
        """`attempt(connection)`, again on the next replica after a dropped connection."""
        for _ in range(2 * len(self.urls)):
            try:
                return await attempt(self.connection)
            except CONNECTION_ERRORS:
                self.connection.close()
                self.home = (self.home + 1) % len(self.urls)
                self.connection = Connection(self.urls[self.home], self.headers)
                self.failovers += 1
        raise RuntimeError(f"no replica answered: {self.urls}")


async def _api_annotator(client: _Client, user_id: int, end: float, acked: set) -> None:
    pair = (await client.send(lambda c: c.json("GET", "/api/v1/pairs/next")))["pair"]
    while pair is not None and time.perf_counter() < end:
        path = f"/api/v1/pairs/{pair['pair_id']}/label?next=true"
        answer = await client.send(lambda c, path=path: c.json("POST", path, {"choice": "left"}))
        acked.add((user_id, pair["pair_id"]))
        pair = answer["next"]


async def _page_annotator(
    client: _Client, events: dict[str, int], user_id: int, end: float, acked: set
) -> None:
    page = PageClient(client.connection, events)

    async def call(api_name: str, data: list) -> list:
        async def attempt(connection: Connection) -> list:
            page.connection = connection
            return await page.call(api_name, data)

        return await client.send(attempt)

    held = (await call("show", []))[-1]
    while held is not None and time.perf_counter() < end:
        outputs = await call("label_left", [held, ""])
        if "Saved" not in outputs[0]:  # the page's body, with its feedback line
            raise RuntimeError(f"a click stored no label: {outputs[0][-300:]}")
        acked.add((user_id, held))
        held = outputs[-1]


async def _run(urls, annotators, seconds, kill, kill_after) -> LoadResult:
    cookies = await asyncio.gather(*(login(urls[0], a.name) for a in annotators))
    events = label_events(urls[0], cookies[0])
    acked: set[tuple[int, int]] = set()
    start = time.perf_counter()
    end = start + seconds
    clients, work = [], []
    for i, (annotator, cookie) in enumerate(zip(annotators, cookies, strict=True)):
        home = (i // 2) % len(urls)  # each replica gets both kinds of client
        if i % 2 == 0:
            client = _Client(urls, home, {"Authorization": f"Bearer {annotator.token}"})
            work.append(_api_annotator(client, annotator.user_id, end, acked))
        else:
            client = _Client(urls, home, cookie_header(cookie))
            work.append(_page_annotator(client, events, annotator.user_id, end, acked))
        clients.append(client)

    async def killer() -> None:
        await asyncio.sleep(kill_after)
        kill()

    try:
        await asyncio.gather(*work, *([killer()] if kill is not None else []))
    finally:
        for client in clients:
            client.connection.close()
    return LoadResult(
        acknowledged=acked,
        seconds=time.perf_counter() - start,
        failovers=sum(c.failovers for c in clients),
    )


def replicated_load(
    urls: list[str],
    annotators: list[Annotator],
    *,
    seconds: float,
    kill: Callable[[], None] | None = None,
    kill_after: float = 0.0,
) -> LoadResult:
    """Label for `seconds` (or until the queue is empty); `kill()` after `kill_after` s."""
    return asyncio.run(_run(urls, annotators, seconds, kill, kill_after))


def integrity(engine, annotators: list[Annotator], acknowledged: set) -> Integrity:
    """What the database holds against what the clients were told."""
    user_ids = [a.user_id for a in annotators]
    with transaction(engine, readonly=True) as session:
        stored_rows = session.exec(
            sa.select(Label.user_id, Label.pair_id).where(Label.user_id.in_(user_ids))
        ).all()
        per_pair = session.exec(
            sa.select(Pair.id, Pair.overlap, Pair.n_labels, sa.func.count(Label.id))
            .join(Label, Label.pair_id == Pair.id, isouter=True)
            .group_by(Pair.id, Pair.overlap, Pair.n_labels)
        ).all()
    stored = {(user, pair) for user, pair in stored_rows}
    return Integrity(
        acknowledged=len(acknowledged),
        stored=len(stored_rows),
        lost=len(acknowledged - stored),
        unacknowledged=len(stored - acknowledged),
        duplicates=len(stored_rows) - len(stored),
        over_assigned=sum(labels > overlap for _, overlap, _, labels in per_pair),
        miscounted=sum(n_labels != labels for _, _, n_labels, labels in per_pair),
    )
