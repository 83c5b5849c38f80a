"""The generation worker (.venv-vllm): one process and one engine across iterations, a new policy
loaded in place after a deploy, a failed request that leaves it serving, memory released while
training runs. One worker for the module: an engine's cold start is the expensive part."""

from __future__ import annotations

import os
import sys

import pytest
from sqlmodel import select

from labeling.iteration import generate_iteration
from labeling.vllm_engine import CPU_KV_CACHE_GIB
from labeling.vllm_worker import (
    ADDRESS_FILE,
    WorkerError,
    WorkerSampler,
    release_worker,
    stop_worker,
    worker_status,
)
from storage import crud
from storage.db import make_engine, transaction, upgrade
from storage.models import IterationState, PolicyStatus, Response
from storage.settings import Settings
from tests.labeling.test_vllm import perturb_checkpoint
from training.deploy import deploy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = [
    "Give me a tip for sleeping better.",
    "What is a good name for a cat?",
    "Explain what a rainbow is in one sentence.",
    "Suggest a weekend activity.",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("worker")
    yield data_dir
    stop_worker(data_dir)  # whatever a test left running


@pytest.fixture(scope="module")
def settings(data_dir):
    generation = {
        "backend": "vllm",
        "vllm_python": sys.executable,  # this environment has vllm
        "vllm_release": "stop",  # on a CPU, auto keeps the engine: stop shows the release
        "n_samples": 2,
        "max_new_tokens": 16,
        "prompts_per_round": 4,
        "batch_size": 4,
        "device": "cpu",
    }
    return Settings(data_dir=data_dir, generation=generation)


@pytest.fixture(scope="module")
def policies(smollm2_dir, data_dir):
    """pi_0 and a second policy of the same architecture (its weights perturbed)."""
    return smollm2_dir, perturb_checkpoint(smollm2_dir, data_dir / "policies" / "v1")


@pytest.fixture(scope="module")
def database(data_dir, policies):
    engine = make_engine(f"sqlite:///{data_dir / 'prefloop.db'}")
    upgrade(engine)
    with transaction(engine) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text=p) for p in PROMPTS])
        crud.create_policy(
            session=session, version=0, path=str(policies[0]), status=PolicyStatus.deployed
        )
        crud.create_policy(
            session=session, version=1, path=str(policies[1]), status=PolicyStatus.candidate
        )
    yield engine
    engine.dispose()


def _close_iteration(engine, iteration_id: int) -> None:
    with transaction(engine) as session:  # labeling and training, cut short
        for state in (IterationState.training, IterationState.evaluating, IterationState.deployed):
            crud.set_iteration_state(session=session, iteration_id=iteration_id, state=state)


def test_two_iterations_share_one_engine_reloaded_after_the_deploy(database, settings):
    # a prompt past SmolLM2's 8192-token window, which vLLM would refuse, failing the call:
    # the round passes over it (all five prompts considered, four sampled)
    long_prompt = "word " * 9000
    with transaction(database) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text=long_prompt)])
    first = generate_iteration(engine=database, settings=settings, n_prompts=5)
    assert (first["prompts"], first["prompts_too_long"]) == (4, 1)
    assert first["policy_load"]["how"] in ("started", "kept")
    pid = worker_status(settings.data_dir)["pid"]

    _close_iteration(database, first["iteration_id"])
    deploy(engine=database, version=1)
    second = generate_iteration(engine=database, settings=settings)
    load = second["policy_load"]
    assert load["how"] == "reloaded" and load["check"]["passed"] and "fallback" not in load
    status = worker_status(settings.data_dir)
    assert status["pid"] == pid and status["engine"] == "running"
    assert status["loads"][-1] == "reloaded" and "restarted" not in status["loads"]

    with transaction(database, readonly=True) as session:
        responses = session.exec(select(Response)).all()
    by_iteration = {}
    for r in responses:
        by_iteration.setdefault(r.iteration_id, set()).add(
            (r.sampling["backend"], r.sampling["policy_version"])
        )
    assert by_iteration == {
        first["iteration_id"]: {("vllm", 0)},
        second["iteration_id"]: {("vllm", 1)},
    }


def test_a_failed_request_leaves_the_worker_serving(settings, policies):
    with pytest.raises(WorkerError, match="no-such-policy"):
        WorkerSampler(
            settings.data_dir / "no-such-policy", settings.generation, data_dir=settings.data_dir
        )
    pid = worker_status(settings.data_dir)["pid"]
    sampler = WorkerSampler(policies[1], settings.generation, data_dir=settings.data_dir)
    try:
        rows = sampler.sample(PROMPTS[:2], n=2, temperatures=[0.7], seed=0)
    finally:
        sampler.close()
    assert [len(row) for row in rows] == [2, 2] and all(
        s.backend == "vllm" for r in rows for s in r
    )
    status = worker_status(settings.data_dir)
    assert status["pid"] == pid and status["failed"] >= 1


def _resident_bytes(pid: int) -> int:
    """The worker's resident memory, its child processes' included."""
    import psutil

    worker = psutil.Process(pid)
    processes = [worker, *worker.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes if p.status() != psutil.STATUS_ZOMBIE)


def test_release_stops_the_engine_until_the_next_request(settings, policies):
    sampler = WorkerSampler(policies[0], settings.generation, data_dir=settings.data_dir)
    sampler.close()
    pid = worker_status(settings.data_dir)["pid"]
    serving = _resident_bytes(pid)

    assert release_worker(settings.data_dir) == {"released": "stop"}
    status = worker_status(settings.data_dir)
    assert status["engine"] == "stopped" and status["pid"] == pid
    # the engine's memory is free: its KV cache (2 GiB on a CPU) and weights; the worker's
    # imports and transformers' reference model for the check stay (about 1.2 GiB)
    assert serving - _resident_bytes(pid) > CPU_KV_CACHE_GIB * 2**30

    sampler = WorkerSampler(policies[0], settings.generation, data_dir=settings.data_dir)
    try:
        assert sampler.load_report["how"] == "started"
        assert len(sampler.sample(PROMPTS[:1], n=2, temperatures=[1.0])[0]) == 2
    finally:
        sampler.close()


def test_stop_ends_the_worker_and_its_engine(settings, policies):
    sampler = WorkerSampler(policies[0], settings.generation, data_dir=settings.data_dir)
    sampler.close()
    pid = worker_status(settings.data_dir)["pid"]
    assert stop_worker(settings.data_dir)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (settings.data_dir / ADDRESS_FILE).exists()
    assert worker_status(settings.data_dir) is None and not stop_worker(settings.data_dir)
