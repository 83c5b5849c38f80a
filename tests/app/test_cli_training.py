"""`prefloop loop --simulate` when a step fails: it stops at once with the error and exits 1,
rather than waiting out its timeout for an iteration that never comes. No model is loaded: the
failures come before one would be."""

from __future__ import annotations

import json
import time

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from app.cli import cli
from storage import crud
from storage.db import transaction
from storage.models import IterationState, Job
from storage.runtime import open_runtime
from tests.factories import make_pairs, make_policy

JUDGE = "tests.labeling.test_simulate:negative_judge"
TIMEOUT = 60  # what a hang would take; each failure here takes a few seconds


@pytest.fixture
def data_dir(tmp_path, monkeypatch, database):
    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-test-password-1")
    (tmp_path / "prefloop.toml").write_text("[loop]\nquota_check_seconds = 1\n")
    result = CliRunner().invoke(cli, ["init", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return tmp_path


def _loop(data_dir, *args: str):
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        ["loop", "--simulate", "--judge", JUDGE, "--timeout", str(TIMEOUT), "--annotators", "1"]
        + [*args, "--data-dir", str(data_dir)],
    )
    return result, time.monotonic() - started


def test_a_failed_iteration_stops_the_loop_with_its_error(data_dir):
    rt = open_runtime(data_dir)
    with transaction(rt.engine) as session:
        policy = make_policy(session)
        iteration = crud.start_iteration(
            session=session, policy_in_id=policy.id, human_quota=2, human_budget=2
        )
        make_pairs(session, 2, iteration_id=iteration.id)
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
    # every pair both bad: nothing to train on, an error a retry would only repeat
    result, seconds = _loop(data_dir, "--iterations", "2", "--both-bad-below", "0", "--json")
    assert result.exit_code == 1, result.output
    assert seconds < TIMEOUT and "timed out" not in result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert (line["iteration"], line["decision"]) == (0, "failed")
    assert "no preferences to train on" in line["error"]
    with transaction(rt.engine, readonly=True) as session:
        assert len(session.exec(select(Job).where(Job.kind == "train")).all()) == 1

    # Run again: a new round is generated (here it fails: the policy's path is no model), and
    # the loop reports that, not iteration 0's old failure.
    result, seconds = _loop(data_dir, "--iterations", "1")
    assert result.exit_code == 1 and seconds < TIMEOUT, result.output
    assert "iteration 1 failed: generation" in result.output
    rt.engine.dispose()


def test_a_failed_generation_job_stops_the_loop(data_dir):
    result, seconds = _loop(data_dir, "--iterations", "1")  # no policy at all
    assert result.exit_code == 1 and seconds < TIMEOUT, result.output
    assert "generate job 1 failed: GenerationError: no deployed policy" in result.output


def test_a_diverging_dpo_round_fails_its_iteration_and_leaves_no_candidate(data_dir):
    """A learning rate that sends the loss to NaN: the round fails naming the setting to lower,
    registers no candidate and leaves nothing in policies/, and pi_0 stays deployed."""
    from storage.models import Policy, PolicyStatus
    from tests.training.conftest import tiny_causal_lm

    model = tiny_causal_lm(data_dir / "policies" / "v0")
    with (data_dir / "prefloop.toml").open("a") as f:
        f.write("[dpo]\nlearning_rate = 1e9\nper_device_train_batch_size = 2\n")
    rt = open_runtime(data_dir)
    with transaction(rt.engine) as session:
        policy = crud.create_policy(
            session=session, version=0, path=str(model), status=PolicyStatus.deployed
        )
        iteration = crud.start_iteration(
            session=session, policy_in_id=policy.id, human_quota=4, human_budget=4
        )
        make_pairs(session, 4, iteration_id=iteration.id)
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
    result, seconds = _loop(data_dir, "--iterations", "1", "--json")
    assert result.exit_code == 1 and seconds < TIMEOUT, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert (line["iteration"], line["decision"]) == (0, "failed")
    assert "DPO diverged" in line["error"] and "lower dpo.learning_rate" in line["error"]
    with transaction(rt.engine, readonly=True) as session:
        policies = session.exec(select(Policy.version, Policy.status)).all()
    assert policies == [(0, PolicyStatus.deployed)]
    assert sorted(p.name for p in (data_dir / "policies").iterdir()) == ["v0"]
    rt.engine.dispose()


def test_training_asked_for_before_a_decided_pair_is_refused_and_the_round_stays_open(data_dir):
    """`prefloop train` and the admin's "train now" on a round without a decided pair (none
    labeled, or only ties) say so and change nothing: the iteration keeps labeling, no job."""
    from app.scheduler import request_training
    from tests.factories import label_pair, make_user

    rt = open_runtime(data_dir)
    with transaction(rt.engine) as session:
        policy = make_policy(session)
        iteration = crud.start_iteration(
            session=session, policy_in_id=policy.id, human_quota=2, human_budget=2
        )
        tied, later = make_pairs(session, 2, iteration_id=iteration.id)
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
        ann = make_user(session, name="ann")
    refusal = "iteration 0 has no decided pair to train on yet: label some first"
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(data_dir)])
    assert result.exit_code == 1 and refusal in result.output, result.output
    with transaction(rt.engine) as session:
        label_pair(session, tied, "tie", users=(ann,))
    with pytest.raises(crud.Conflict, match=refusal):
        request_training(rt, user_id=None)
    with transaction(rt.engine, readonly=True) as session:
        assert crud.get_iteration(session=session, iteration_id=iteration.id).state == (
            IterationState.labeling
        )
        assert session.exec(select(Job)).all() == []
    with transaction(rt.engine) as session:
        label_pair(session, later, "b", users=(ann,))
    job_id = request_training(rt, user_id=None)
    with transaction(rt.engine, readonly=True) as session:
        assert session.get(Job, job_id).kind == "train"
        assert crud.get_iteration(session=session, iteration_id=iteration.id).state == (
            IterationState.training
        )
    rt.engine.dispose()
