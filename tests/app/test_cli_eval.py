"""`prefloop eval-pairs`, `leaderboard` and `eval-export`, and the admin view's evaluation tab,
on a data directory with two versions (checkpoints that pass for complete, replies from a fake
sampler: see tests/training/test_human_eval.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.ui.admin_eval import build_eval, leaderboard_svg
from app.ui.guard import AppContext
from storage import crud
from storage.db import transaction
from storage.models import Audit, Job, Role
from tests.app.live_server import seed_users
from tests.app.test_server import _as_user, _handlers
from tests.training.test_human_eval import _eval_pairs, _vote, fake_generate, two_versions


@pytest.fixture
def rt(tmp_path):
    rt = two_versions(tmp_path / "data")
    yield rt
    rt.engine.dispose()


def run(rt, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(rt.settings.data_dir)])
    assert (result.exit_code == 0) == ok, result.output
    return result


def test_eval_pairs_leaderboard_and_export_from_the_command_line(rt, monkeypatch, tmp_path):
    fake_generate(monkeypatch)
    out = run(rt, "eval-pairs", "--a", "1", "--b", "0", "--prompts", "3").output
    assert "v1 vs v0: " in out and "evaluation pairs queued on 3 held-out prompts" in out
    assert "no evaluation votes yet" in run(rt, "leaderboard").output
    assert (
        "no evaluation votes"
        in run(rt, "eval-export", "--out", str(tmp_path / "v.jsonl"), ok=False).output
    )
    _vote(rt)
    text = run(rt, "leaderboard").output
    assert "pi_0 = v0 at 1000" in text and "1000 bootstrap resamples" in text
    assert [line.split()[1] for line in text.splitlines()[2:]] in (["v1", "v0"], ["v0", "v1"])
    board = json.loads(run(rt, "leaderboard", "--json").output)
    added = int(out.split("v1 vs v0: ")[1].split()[0])  # 3, less 1 if the same-reply prompt
    assert board["anchor"] == 0 and board["votes"] == added >= 2
    assert {r["version"] for r in board["ratings"]} == {0, 1}

    jsonl = tmp_path / "votes.jsonl"
    assert f"evaluation votes to {jsonl}" in run(rt, "eval-export", "--out", str(jsonl)).output
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == board["votes"]
    assert all({r["version_a"], r["version_b"]} == {0, 1} for r in rows)
    assert all(r["response_a"].startswith(f"v{r['version_a']}:") for r in rows)
    parquet = tmp_path / "votes.parquet"
    run(rt, "eval-export", "--out", str(parquet), "--format", "parquet")
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(parquet), split="train")
    assert loaded.num_rows == len(rows) and loaded.column_names[:4] == [
        "prompt",
        "messages",
        "response_a",
        "response_b",
    ]
    assert (
        "expected jsonl or parquet"
        in run(rt, "eval-export", "--out", str(tmp_path / "x"), "--format", "hf", ok=False).output
    )
    assert (
        "two different versions" in run(rt, "eval-pairs", "--a", "1", "--b", "1", ok=False).output
    )
    assert "no policy version 5" in run(rt, "eval-pairs", "--a", "5", "--b", "0", ok=False).output
    with transaction(rt.engine, readonly=True) as session:
        actions = [a.action for a in session.exec(Audit.__table__.select())]
    assert actions.count("eval.pairs") == 1 and actions.count("eval.export") == 2


@pytest.fixture
def ctx(rt):
    return AppContext(rt=rt, secret=b"s" * 32)


def test_the_evaluation_tab_shows_the_leaderboard_queues_pairs_and_exports(ctx, rt):
    _eval_pairs(rt, {0: "worst", 1: "best"}, n=10)
    _vote(rt)
    boss = seed_users(rt, {"boss": Role.admin})["boss"]
    with gr.Blocks() as blocks:
        build_eval(ctx)
    handlers = _handlers(blocks)
    as_boss = _as_user(ctx, boss)

    table, plot, a_choices, _ = handlers["eval_refresh"](as_boss)
    assert 'id="pf-leaderboard"' in table and "votes: <b>10</b>" in table
    assert table.index('data-version="1"') < table.index('data-version="0"')  # best first
    assert plot.startswith('<svg id="pf-leaderboard-plot"') and plot.count("pf-interval") == 2
    assert a_choices["choices"] == ["v0 (retired)", "v1 (deployed)"]

    message = handlers["eval_queue"]("v1 (deployed)", "v0 (retired)", 4, as_boss)
    assert "requested (job" in message
    assert "two different versions" in handlers["eval_queue"]("v1", "v1", None, as_boss)
    assert "whole number" in handlers["eval_queue"]("v1", "v0", 2.5, as_boss)
    assert "pick a policy version" in handlers["eval_queue"](None, "v0", None, as_boss)
    with transaction(rt.engine, readonly=True) as session:
        (job,) = session.exec(Job.__table__.select()).all()
    assert (job.kind, job.params["a"], job.params["b"], job.params["prompts"]) == (
        "eval_pairs",
        1,
        0,
        4,
    )

    message, path = handlers["eval_export"]("jsonl", as_boss)
    assert "10 evaluation votes exported" in message
    assert len(Path(path).read_text().splitlines()) == 10
    shutil.rmtree(Path(path).parent)
    with transaction(rt.engine, readonly=True) as session:
        audits = [a.action for a in session.exec(Audit.__table__.select())]
    assert audits.count("eval.request") == 1 and audits.count("eval.export") == 1


def test_the_plot_puts_each_interval_around_its_rating():
    from training.ratings import leaderboard

    board = leaderboard([(0, 1, "b", 30), (0, 1, "a", 10), (1, 2, "b", 25), (1, 2, "a", 15)])
    svg = leaderboard_svg(board)
    assert [
        piece.split("<")[0] for piece in svg.split('text-anchor="end" fill="currentColor">')[1:]
    ] == ["v2", "v1", "v0"]
    widths = []
    for line in svg.split('<line class="pf-interval"')[1:]:
        x1 = float(line.split('x1="')[1].split('"')[0])
        x2 = float(line.split('x2="')[1].split('"')[0])
        cx = float(line.split('cx="')[1].split('"')[0])
        assert x1 <= cx <= x2
        widths.append(x2 - x1)
    assert widths[2] == 0 and min(widths[:2]) > 10  # pi_0 is fixed, the others are not
    assert leaderboard_svg(leaderboard([])) == ""


def test_the_scheduler_tick_runs_a_requested_job_and_decides_the_human_gate(tmp_path, monkeypatch):
    import time

    from app.scheduler import request_eval_pairs, start_scheduler
    from storage.models import JobStatus
    from training.human_eval import start_human_gate

    calls = fake_generate(monkeypatch)
    rt = two_versions(tmp_path / "data", gate="human", human_min_votes=5)
    rt.settings.loop.quota_check_seconds = 0.2
    _eval_pairs(rt, {0: "best", 1: "worst"}, n=5)
    start_human_gate(engine=rt.engine, version=1, opponent=0)
    _vote(rt)
    job_id = request_eval_pairs(rt, None, a_version=1, b_version=0, n_prompts=2)
    handle = start_scheduler(rt)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with transaction(rt.engine, readonly=True) as session:
                job = session.get(Job, job_id)
                deployed = crud.deployed_policy(session=session)
            if job.status in (JobStatus.succeeded, JobStatus.failed) and deployed.version == 0:
                break
            time.sleep(0.1)
    finally:
        handle.shutdown()
        rt.engine.dispose()
    assert job.status == JobStatus.succeeded and job.result["a"] == 1, job.error
    assert sum(job.result[k] for k in ("added", "identical", "present")) == 2
    assert len(calls) == 2  # each version sampled once
    assert deployed.version == 0  # the votes preferred v0: rolled back on a tick
