"""prefloop generate / label --simulate / quality / refit-proxy on a real data directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import cli
from labeling import demo_task as demo
from storage import crud
from storage.db import transaction
from storage.models import PolicyStatus
from storage.runtime import open_runtime

runner = CliRunner()


def run(*args: str, ok: bool = True):
    result = runner.invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def data_dir(tmp_path, monkeypatch, demo_policy_dir, database):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-test-password-1")
    monkeypatch.setenv("PREFLOOP_GENERATION__N_SAMPLES", "4")
    monkeypatch.setenv("PREFLOOP_GENERATION__MAX_NEW_TOKENS", "24")
    monkeypatch.setenv("PREFLOOP_GENERATION__DEVICE", "cpu")
    run("init", "--data-dir", str(tmp_path))
    rt = open_runtime(tmp_path)
    with transaction(rt.engine) as session:
        crud.add_prompts(
            session=session,
            prompts=[crud.PromptIn(text=t, split=s) for t, s in demo.demo_prompts(0)[:20]],
        )
        crud.create_policy(
            session=session, version=0, path=str(demo_policy_dir), status=PolicyStatus.deployed
        )
    return str(tmp_path)


def test_generate_label_quality(data_dir):
    report = json.loads(run("generate", "--prompts", "4", "--json", "--data-dir", data_dir).stdout)
    assert (report["prompts"], report["responses"]) == (4, 16)
    out = run("label", "--simulate", "--annotators", "2", "--noise", "0.5", "--data-dir", data_dir)
    assert f"{report['pairs']} labels from 2 simulated annotators" in out.output
    quality = json.loads(run("quality", "--json", "--data-dir", data_dir).stdout)
    assert quality["human_labels"] == report["pairs"]
    text = run("quality", "--data-dir", data_dir).output
    assert "sim-1" in text and "Krippendorff" in text
    refit = run("refit-proxy", "--data-dir", data_dir, ok=False)
    assert refit.exit_code == 1 and "too few labels" in refit.output
    # the iteration is labeling now: a second round is refused with the reason
    again = run("generate", "--data-dir", data_dir, ok=False)
    assert again.exit_code == 1 and "still labeling" in again.output


def test_generate_says_how_many_prompts_it_passed_over_and_logs_which(data_dir, caplog):
    rt = open_runtime(data_dir)
    long_text = "my parcel never came and the tracking page is empty, what now " * 40
    with transaction(rt.engine) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text=long_text)])
    rt.engine.dispose()
    # 20 demo prompts (some of them held out) and the long one: the round considers all
    out = run("generate", "--prompts", "30", "--data-dir", data_dir).output
    assert "prompts (passed over: 1 too long for the policy, 0 refused by its chat template;" in out
    assert "1 train prompts left out, too long for the policy (a prompt may have up to 232 " in (
        caplog.text
    )
    assert "Token indices sequence length" not in caplog.text  # what is asked, not a mistake
    # and the admin view's timeline says so on the iteration's row
    from app.ui.admin_loop import timeline_html
    from app.ui.guard import AppContext

    rt = open_runtime(data_dir)
    timeline = timeline_html(AppContext(rt=rt, secret=b"s" * 32))
    rt.engine.dispose()
    assert (
        '<div class="pf-warning">15 prompts sampled; passed over: 1 too long for the policy '
        "(their ids are in the round&#x27;s log)</div>"
    ) in timeline


def test_prompts_import_names_the_prompts_the_policy_cannot_answer(data_dir, tmp_path):
    """A prompt that leaves the policy no room for a reply is stored, and every round passes it
    over: the import says which lines, and why, when it stores them rather than at each round."""
    long_text = "my parcel never came and the tracking page is empty, what now " * 40
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "where is my refund?"}, {"prompt": long_text}]
    rows += [{"prompt": "an eval one, " + long_text, "split": "eval"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run("prompts", "import", str(path), "--data-dir", data_dir)
    assert "3 prompts added, 0 duplicates skipped (1 of the file eval)" in result.stdout
    assert result.stderr.strip() == (
        f"{path}: 2 of these prompts cannot be sampled by the policy, and rounds and evaluations "
        "pass them over (they are stored all the same): 2 too long for the policy (a prompt may "
        "have up to 232 tokens: the policy's context of 256 less generation.max_new_tokens "
        "(24)): line 2, line 3"
    )
    fine = tmp_path / "fine.jsonl"
    fine.write_text(json.dumps({"prompt": "my order came broken"}) + "\n")
    result = run("prompts", "import", str(fine), "--data-dir", data_dir)
    assert "1 prompts added" in result.stdout and result.stderr == ""


def test_label_without_simulate_points_to_the_browser(data_dir):
    result = run("label", "--data-dir", data_dir, ok=False)
    assert result.exit_code == 1 and "prefloop serve" in result.output


@pytest.fixture
def queued_pairs(tmp_path, monkeypatch):
    """A data directory with 4 queued pairs and no policy."""
    from tests.factories import make_pairs

    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-test-password-1")
    run("init", "--data-dir", str(tmp_path))
    rt = open_runtime(tmp_path)
    with transaction(rt.engine) as session:
        make_pairs(session, 4)
    rt.engine.dispose()
    return str(tmp_path)


def _choices(data_dir: str) -> list[str]:
    from sqlmodel import select

    from storage.models import Label

    rt = open_runtime(data_dir)
    with transaction(rt.engine, readonly=True) as session:
        choices = [label.choice.value for label in session.exec(select(Label))]
    rt.engine.dispose()
    return choices


def test_label_simulate_with_a_negative_judge_and_a_both_bad_threshold(queued_pairs):
    judge = "tests.labeling.test_simulate:negative_judge"
    args = ("label", "--simulate", "--annotators", "1", "--noise", "0", "--judge", judge)
    run(*args, "--max-labels", "2", "--data-dir", queued_pairs)
    assert set(_choices(queued_pairs)) <= {"a", "b"}  # scores all below 0, yet not both bad
    run(*args, "--both-bad-below", "-1", "--data-dir", queued_pairs)
    assert _choices(queued_pairs).count("both_bad") == 2  # the two pairs left
