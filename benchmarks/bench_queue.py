"""The annotation queue at the storage level: does a click cost the same with 2k or 20k queued pairs?

50 annotators each hold a lease (the steady state of a busy labeling session); one "click" is what
the labeling view does in one write transaction: submit the held pair's label and claim the next.
Then `queue_stats` (the counter under the page) in a read transaction. Baseline: an empty write
transaction (BEGIN IMMEDIATE + COMMIT) on the same database, timed in the same process.
The goal: clicks/s at 20k / clicks/s at 2k ≈ 1 (the cost must not grow with the queue).

    python -m benchmarks queue [--quick]
    PREFLOOP_BENCH_POSTGRES_URL=postgresql://... python -m benchmarks queue   # PostgreSQL too
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from storage import crud, queue
from storage.db import make_engine, normalize_url, refresh_statistics, transaction, upgrade
from storage.models import Pair, PairStatus, Prompt, Response, Role, Suggestion

N_USERS = 50
LEASE_SECONDS = 600


def add_pairs(engine, n_pairs: int) -> None:
    """n_pairs queued human pairs, each with a proxy suggestion, in bulk (seeding is not what is
    measured)."""
    tag = uuid.uuid4().hex[:8]
    with transaction(engine) as session:
        prompts = [
            Prompt(text=f"Prompt {tag} {i}: *compare*", content_hash=f"{tag}{i:056d}")
            for i in range(n_pairs)
        ]
        session.add_all(prompts)
        session.flush()
        responses = [
            (
                Response(prompt_id=p.id, text=f"Reply a {p.id}\n\n- one"),
                Response(prompt_id=p.id, text=f"Reply b {p.id}"),
            )
            for p in prompts
        ]
        session.add_all([r for ab in responses for r in ab])
        session.flush()
        pairs = [
            Pair(prompt_id=a.prompt_id, response_a_id=a.id, response_b_id=b.id)
            for a, b in responses
        ]
        session.add_all(pairs)
        session.flush()
        session.add_all(
            [Suggestion(pair_id=p.id, p_a=0.7, uncertainty=0.05, agent="proxy:v1") for p in pairs]
        )
        session.flush()
        refresh_statistics(session, "pair")  # as storage.pairs.add_pairs does after a round


def queued_pairs(engine) -> int:
    with transaction(engine, readonly=True) as session:
        return session.execute(
            sa.select(sa.func.count(Pair.id)).where(Pair.status == PairStatus.queued)
        ).scalar_one()


def seed(engine, n_pairs: int) -> list[int]:
    """n_pairs queued pairs and N_USERS annotators (ids)."""
    add_pairs(engine, n_pairs)
    tag = uuid.uuid4().hex[:8]
    with transaction(engine) as session:
        users = [
            crud.create_user(
                session=session, name=f"bench{tag}{i}", role=Role.annotator, password_hash=None
            ).id
            for i in range(N_USERS)
        ]
    return users


def measure(engine, users: list[int], n_clicks: int) -> dict[str, float]:
    rng = random.Random(0)
    held: dict[int, int] = {}
    for user in users:  # every annotator holds a lease
        with transaction(engine) as session:
            claim = queue.claim_next_pair(
                session=session, user_id=user, lease_seconds=LEASE_SECONDS, rng=rng
            )
            held[user] = claim.pair_id

    start = time.perf_counter()
    for i in range(n_clicks):
        user = users[i % len(users)]
        with transaction(engine) as session:
            queue.submit_label(
                session=session, user_id=user, pair_id=held[user], shown_choice="left"
            )
            claim = queue.claim_next_pair(
                session=session, user_id=user, lease_seconds=LEASE_SECONDS, rng=rng
            )
            held[user] = claim.pair_id
    clicks = n_clicks / (time.perf_counter() - start)

    start = time.perf_counter()
    for i in range(n_clicks):
        with transaction(engine, readonly=True) as session:
            queue.queue_stats(session=session, user_id=users[i % len(users)])
    stats = n_clicks / (time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(n_clicks):
        with transaction(engine) as session:
            session.execute(sa.select(1))
    baseline = n_clicks / (time.perf_counter() - start)
    return {"clicks": clicks, "stats": stats, "baseline": baseline}


def _fresh_postgres(url: str) -> tuple[str, callable]:
    admin = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"prefloop_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    db_url = sa.make_url(normalize_url(url)).set(database=name)

    def drop() -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()

    return db_url.render_as_string(hide_password=False), drop


ROUNDS = 3


def run_backend(label: str, make_url, sizes: list[int], n_clicks: int) -> None:
    """Both sizes are set up first, then measured in alternation, ROUNDS times, keeping each
    figure's best round: the machine is shared, and its load drifts within a minute."""
    worlds, cleanups, results = {}, [], {}
    try:
        for n_pairs in sizes:
            url, cleanup = make_url()
            engine = make_engine(url)
            cleanups.append((engine, cleanup))
            upgrade(engine)
            worlds[n_pairs] = (engine, seed(engine, n_pairs))
        for _ in range(ROUNDS):
            for n_pairs, (engine, users) in worlds.items():
                r = measure(engine, users, n_clicks // ROUNDS)
                best = results.setdefault(n_pairs, r)
                results[n_pairs] = {k: max(best[k], r[k]) for k in r}
    finally:
        for engine, cleanup in cleanups:
            engine.dispose()
            cleanup()
    for n_pairs, r in results.items():
        print(
            f"{label} {n_pairs:>6} queued pairs: submit+claim-next {r['clicks']:.0f}/s, "
            f"queue_stats {r['stats']:.0f}/s; baseline empty write transaction "
            f"{r['baseline']:.0f}/s; ratio {r['clicks'] / r['baseline']:.2f} "
            f"(best of {ROUNDS} alternating rounds)",
            flush=True,
        )
    small, large = results[sizes[0]], results[sizes[-1]]

    def norm(r: dict, key: str) -> float:  # against the same run's baseline: the load varies
        return r[key] / r["baseline"]

    print(
        f"{label} flatness {sizes[-1]} vs {sizes[0]} pairs (1.00 = independent of the queue "
        f"size): submit+claim-next {large['clicks'] / small['clicks']:.2f} raw, "
        f"{norm(large, 'clicks') / norm(small, 'clicks'):.2f} baseline-normalized; queue_stats "
        f"{large['stats'] / small['stats']:.2f} raw, "
        f"{norm(large, 'stats') / norm(small, 'stats'):.2f} baseline-normalized"
    )


def main(quick: bool = False) -> None:
    sizes = [2_000, 20_000]
    n_clicks = 300 if quick else 1_000
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-queue-") as tmp:
        counter = iter(range(100))

        def sqlite_url():
            return f"sqlite:///{Path(tmp) / f'q{next(counter)}.db'}", lambda: None

        run_backend("sqlite", sqlite_url, sizes, n_clicks)
    if pg := os.environ.get("PREFLOOP_BENCH_POSTGRES_URL"):
        run_backend("postgres", lambda: _fresh_postgres(pg), sizes, n_clicks)


if __name__ == "__main__":
    main()
