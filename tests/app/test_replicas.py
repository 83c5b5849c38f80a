"""Two `prefloop serve` replicas on one PostgreSQL database, each with --workers 2, as two hosts
behind a load balancer: one scheduler between them, and annotators spread over both lose no
acknowledged label, get no duplicate and over-fill no pair when one replica is killed with
kill -9 under load. (`python -m benchmarks replicas` runs the same with 50 annotators.)"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from tests.app.live_server import REPO, live_server, seed_pairs
from tests.app.replicas import annotators_of, integrity, replicated_load
from tests.conftest import fresh_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ANNOTATORS = 8
PAIRS = 1500
OVERLAP = 2


@pytest.fixture
def shared_database(monkeypatch):
    """One PostgreSQL database and session key for every replica (what hosts would share)."""
    with fresh_postgres_database() as url:
        monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
        monkeypatch.setenv("PREFLOOP_SESSION_SECRET", secrets.token_hex(32))
        yield url


def _serve(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
    command += ["--data-dir", str(data_dir), "--port", "1", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_two_replicas_one_scheduler_and_a_kill_under_load(tmp_path, shared_database):
    with live_server(tmp_path / "host-a", scheduler=True, workers=2) as a:
        # a second replica that asks for the scheduler too is refused, naming the one running
        refused = _serve(tmp_path / "host-b")
        assert refused.returncode == 1
        assert "a scheduler already runs on this database" in refused.stderr
        assert f"prefloop scheduler on {os.uname().nodename} pid {a.process.pid}" in refused.stderr
        assert "--no-scheduler" in refused.stderr

        annotators = annotators_of(a.rt, [f"ann{i}" for i in range(ANNOTATORS)])
        items = [(f"prompt {i}", f"reply {i} a", f"reply {i} b") for i in range(PAIRS)]
        seed_pairs(a.rt, items, overlap=OVERLAP)

        with live_server(tmp_path / "host-b", workers=2) as b:
            result = replicated_load(
                [a.url, b.url], annotators, seconds=20, kill=b.kill_hard, kill_after=6
            )
            assert b.process.returncode == -9  # it really died mid-run

        report = integrity(a.rt.engine, annotators, result.acknowledged)
        print(report.line(), f"failovers {result.failovers}")
        # the clients on b moved to a, and a went on labeling after the kill
        assert result.failovers >= ANNOTATORS // 2
        assert report.acknowledged > 2 * ANNOTATORS
        assert (report.lost, report.duplicates, report.over_assigned, report.miscounted) == (
            0,
            0,
            0,
            0,
        ), report.line()
