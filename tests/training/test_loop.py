"""`prefloop loop --simulate`: one small unattended iteration through the scheduler, from the
command line, with the labeling package's generation, proxy and simulated annotators."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.training.conftest import make_loop_runtime

pytestmark = pytest.mark.slow
pytest.importorskip("labeling.simulate")

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
[dpo]
num_train_epochs = 1
"""


def test_loop_runs_iterations_unattended(tmp_path, demo_policy_dir):
    from app.cli import cli

    data_dir = tmp_path / "data"
    make_loop_runtime(data_dir, demo_policy_dir).engine.dispose()
    (data_dir / "prefloop.toml").write_text(TINY)
    result = CliRunner().invoke(
        cli,
        ["loop", "--simulate", "--iterations", "1", "--json", "--data-dir", str(data_dir)],
    )
    assert result.exit_code == 0, result.output
    # stdout alone: progress bars on stderr share output's lines in the test runner
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert line["iteration"] == 0 and line["decision"] in ("deployed", "rejected")
    assert line["human_labels"] == 8 and line["dpo"]["n_pairs"] > 0
    assert 0.0 <= line["gold_win_rate_vs_pi0"] <= 1.0
    assert line["next_iteration"] == 1  # the next round's pairs are queued
