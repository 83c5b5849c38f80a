"""`prefloop loop --simulate`: two small unattended iterations through the scheduler, from the
command line, with the labeling package's generation, proxy and simulated annotators, on SQLite
and on PostgreSQL. The gate is open (threshold 0): the test is about the loop's plumbing, not a
win-rate sampled on 8 prompts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from storage import crud
from storage.db import transaction
from storage.runtime import open_runtime
from tests.training.conftest import make_loop_runtime

pytestmark = pytest.mark.slow

TINY = """
[generation]
prompts_per_round = 8
n_samples = 2
max_new_tokens = 32
[loop]
human_quota = 8
quota_check_seconds = 1
[eval]
n_prompts = 8
max_new_tokens = 32
win_rate_threshold = 0.0
[dpo]
num_train_epochs = 1
"""


def test_loop_runs_iterations_unattended(tmp_path, demo_policy_dir, database):
    from app.cli import cli

    data_dir = tmp_path / "data"
    make_loop_runtime(data_dir, demo_policy_dir).engine.dispose()
    (data_dir / "prefloop.toml").write_text(TINY)
    result = CliRunner().invoke(
        cli,
        ["loop", "--simulate", "--iterations", "2", "--json", "--data-dir", str(data_dir)],
    )
    assert result.exit_code == 0, result.output
    # stdout alone: progress bars on stderr share output's lines in the test runner
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [line["iteration"] for line in lines] == [0, 1]
    assert [line["decision"] for line in lines] == ["deployed", "deployed"]
    assert [line["candidate_version"] for line in lines] == [1, 2]
    assert [line["next_iteration"] for line in lines] == [1, 2]  # the next pairs are queued
    for line in lines:
        assert line["human_labels"] == 8 and line["dpo"]["n_pairs"] > 0, line
    assert lines[1]["previous_version"] == 1
    # what the loop printed is what the evaluation stored on the policy rows
    rt = open_runtime(data_dir)
    with transaction(rt.engine, readonly=True) as session:
        deployed = crud.deployed_policy(session=session)
        stored = [
            crud.get_policy(session=session, version=v).metrics["eval"]["vs"]["v0"]["gold"]
            for v in (1, 2)
        ]
    rt.engine.dispose()
    assert deployed.version == 2
    assert [line["gold_win_rate_vs_pi0"] for line in lines] == [s["win_rate"] for s in stored]
