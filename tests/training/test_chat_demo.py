"""The chat demo end to end on the real model: `init --demo chat` converts nothing twice, fits the
proxy on the seed preferences and queues pairs it has an opinion on; simulated annotators label
them; one round trains DPO on SmolLM2, evaluates, and deploys (the gate under the test's control).
Small sizes keep it to a few minutes on 2 cores; the chat demo's real sizes are its defaults."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from app.cli import cli
from storage.db import transaction
from storage.models import Choice, Label, LabelSource, Pair, PairStatus, Suggestion
from storage.runtime import open_runtime

pytestmark = pytest.mark.slow
runner = CliRunner()

SMALL = {
    "PREFLOOP_GENERATION__FIRST_ROUND_PROMPTS": "4",
    "PREFLOOP_GENERATION__N_SAMPLES": "2",
    "PREFLOOP_GENERATION__MAX_NEW_TOKENS": "48",
    "PREFLOOP_EVAL__N_PROMPTS": "4",
    "PREFLOOP_EVAL__MAX_NEW_TOKENS": "48",
    "PREFLOOP_EVAL__WIN_RATE_THRESHOLD": "0.0",  # plumbing under test, not the gate
    "PREFLOOP_EVAL__IMPLICIT_REWARD_MIN_GAP": "0.0",  # every held-out pair the judge does not tie
    "PREFLOOP_DPO__MAX_LENGTH": "192",
    "PREFLOOP_DPO__NUM_TRAIN_EPOCHS": "0.25",  # 2 of the round's 9 steps
    "PREFLOOP_LOOP__AUTO_CONTINUE": "false",
}


def run(*args: str):
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_chat_demo_init_label_train_deploy(tmp_path, smollm2_dir, monkeypatch):
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-test-password-1")
    data = tmp_path / "data"
    (data / "policies").mkdir(parents=True)
    shutil.copytree(smollm2_dir, data / "policies" / "v0")  # the conversion, done once
    out = run("init", "--demo", "chat", "--data-dir", str(data))
    assert "converted from GGUF" in out and "320 added" in out
    assert "seed preferences: 64 added" in out
    assert "proxy v1: fitted on 64 seed preferences" in out
    assert "first round: iteration 0 queued" in out
    assert 'demo = "chat"' in (data / "prefloop.toml").read_text()

    rt = open_runtime(data)
    assert rt.settings.eval.judge == "labeling.chat_task:chat_judge"  # the demo's defaults
    with transaction(rt.engine, readonly=True) as session:
        queued = list(session.exec(select(Pair).where(Pair.status == PairStatus.queued)))
        suggestions = list(session.exec(select(Suggestion)))
    assert len(queued) == 4
    # the proxy has an opinion on the very first pairs: not the unfitted P = 0.5
    assert {s.pair_id for s in suggestions} == {p.id for p in queued}
    assert all(abs(s.p_a - 0.5) > 1e-6 for s in suggestions)

    again = run("init", "--demo", "chat", "--data-dir", str(data))
    assert "0 added, 320 present already" in again and "first round" not in again

    run("label", "--simulate", "--data-dir", str(data))
    report = json.loads(run("train", "--json", "--data-dir", str(data)))
    assert report["decision"] == "deployed", report
    with transaction(rt.engine, readonly=True) as session:
        decided = list(
            session.exec(
                select(Label).where(
                    Label.source == LabelSource.human, Label.choice.in_([Choice.a, Choice.b])
                )
            )
        )
    assert report["train"]["n_pairs"] == 64 + len(decided)  # the seeds and each decided label
    # the candidate's implicit reward against pi_0 on pi_0's held-out replies (the demo's 6 a
    # prompt: 15 pairs), ranked by the judge
    heldout = report["eval"]["implicit_reward"]
    assert heldout["reference_version"] == 0 and 4 < heldout["n_pairs"] <= 60
    assert heldout["margin"] != 0.0  # pi_0 against itself has none: the round moved the policy
    status = json.loads(run("status", "--json", "--data-dir", str(data)))
    assert status["deployed_policy"]["version"] == 1
