"""The web app on PostgreSQL beside SQLite, and two replicas of it on one PostgreSQL database.

In one run, 50 concurrent annotators (each its own user), 2,000 queued pairs, the same phases as
`bench app` (submits/s through the labeling page's Gradio event and through the JSON API's
label?next, each the best of 3 alternating rounds, against GET /healthz):
  1. SQLite, one server, --workers 1 and --workers 2 (the single-server baselines);
  2. PostgreSQL, one replica with --workers 2;
  3. PostgreSQL, two replicas with --workers 2 each, the clients spread over both as a
     round-robin load balancer would.
The ratios are against both SQLite single servers: --workers 1 (`prefloop serve`'s default) and
--workers 2 (the faster).
Then the integrity run: two replicas on PostgreSQL, 50 annotators (half through the API, half
through the page), one replica killed with kill -9 a third of the way in, its clients moving to
the other; it prints acknowledged / stored / lost / duplicates / over-assigned, which must be
exact (0 lost, 0 duplicates, 0 over-assigned).

Client and servers share the machine's cores.

    PREFLOOP_BENCH_POSTGRES_URL=postgresql://user:pass@127.0.0.1:5432/postgres \\
        python -m benchmarks replicas [--quick]
"""

from __future__ import annotations

import os
import secrets
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.bench_app import submit_rates, top_up
from benchmarks.bench_queue import _fresh_postgres
from tests.app.live_server import live_server, seed_pairs
from tests.app.replicas import annotators_of, integrity, replicated_load

N_CLIENTS = 50
N_PAIRS = 2_000


def measure(label: str, tmp: Path, replicas: int, workers: int, seconds: float) -> dict:
    names = [f"bench{i}" for i in range(N_CLIENTS)]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                live_server(tmp / f"{label}-{i}", scheduler=i == 0, workers=workers)
            )
            for i in range(replicas)
        ]
        rt = servers[0].rt
        tokens = [a.token for a in annotators_of(rt, names)]
        top_up(rt, N_PAIRS)
        rates = submit_rates(
            [s.url for s in servers], rt, names, tokens, n_pairs=N_PAIRS, seconds=seconds
        )
    print(
        f"{label}: Gradio page {rates['gradio']:.0f} submits/s, JSON API {rates['api']:.0f} "
        f"submits/s, GET /healthz {rates['healthz']:.0f} req/s",
        flush=True,
    )
    return rates


def integrity_run(tmp: Path, seconds: float) -> None:
    with live_server(tmp / "kill-a", scheduler=True, workers=2) as a:
        annotators = annotators_of(a.rt, [f"ann{i}" for i in range(N_CLIENTS)])
        items = [(f"prompt {i}", f"reply {i} a", f"reply {i} b") for i in range(4 * N_PAIRS)]
        seed_pairs(a.rt, items, overlap=2)
        with live_server(tmp / "kill-b", workers=2) as b:
            result = replicated_load(
                [a.url, b.url],
                annotators,
                seconds=seconds,
                kill=b.kill_hard,
                kill_after=seconds / 3,
            )
        report = integrity(a.rt.engine, annotators, result.acknowledged)
    print(
        f"two replicas x --workers 2, {N_CLIENTS} annotators, replica b killed with kill -9 "
        f"after {seconds / 3:.0f} s of {seconds:.0f} s: {report.line()}; "
        f"{result.failovers} requests moved to replica a; "
        f"{report.acknowledged / result.seconds:.0f} acknowledged labels/s over the run",
        flush=True,
    )


def main(quick: bool = False) -> None:
    pg = os.environ.get("PREFLOOP_BENCH_POSTGRES_URL")
    if not pg:
        print("bench replicas needs PostgreSQL: set PREFLOOP_BENCH_POSTGRES_URL")
        return
    seconds = 5.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["PREFLOOP_SESSION_SECRET"] = secrets.token_hex(32)
        os.environ.pop("PREFLOOP_DATABASE_URL", None)
        sqlite = {
            w: measure(f"SQLite, 1 server x --workers {w}", tmp, 1, w, seconds) for w in (1, 2)
        }
        results = {}
        for replicas in (1, 2):
            url, drop = _fresh_postgres(pg)
            os.environ["PREFLOOP_DATABASE_URL"] = url
            try:
                label = f"PostgreSQL, {replicas} replica(s) x --workers 2"
                results[replicas] = measure(label, tmp, replicas, 2, seconds)
            finally:
                os.environ.pop("PREFLOOP_DATABASE_URL")
                drop()
        for replicas, rates in results.items():
            for workers, base in sqlite.items():
                print(
                    f"PostgreSQL {replicas} replica(s) x 2 workers against SQLite 1 server x "
                    f"{workers} worker(s): Gradio page {rates['gradio'] / base['gradio']:.2f}x, "
                    f"JSON API {rates['api'] / base['api']:.2f}x (target for 2 replicas: >= "
                    "1.00x)",
                    flush=True,
                )
        url, drop = _fresh_postgres(pg)
        os.environ["PREFLOOP_DATABASE_URL"] = url
        try:
            integrity_run(tmp, 15.0 if quick else 30.0)
        finally:
            os.environ.pop("PREFLOOP_DATABASE_URL")
            drop()


if __name__ == "__main__":
    main()
