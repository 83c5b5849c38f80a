"""The generation worker's client side, in an environment without vllm (the main one): a bad
`generation.vllm_python` is named, and a worker that cannot run vLLM says why and keeps serving."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from labeling.vllm_worker import WorkerError, WorkerSampler, stop_worker, worker_status
from storage.settings import GenerationSettings


def test_a_missing_worker_python_is_named(tmp_path):
    settings = GenerationSettings(backend="vllm", vllm_python="no/such/python")
    with pytest.raises(WorkerError, match=r"generation.vllm_python: .*no/such/python"):
        WorkerSampler(tmp_path / "policy", settings, data_dir=tmp_path)
    assert worker_status(tmp_path) is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_a_worker_without_vllm_says_so_and_keeps_serving(tmp_path):
    settings = GenerationSettings(backend="vllm", vllm_python=sys.executable)
    try:
        with pytest.raises(WorkerError, match="needs vllm"):
            WorkerSampler(tmp_path / "policy", settings, data_dir=tmp_path)
        status = worker_status(tmp_path)
        assert status["failed"] == 1 and status["engine"] == "stopped"
        with pytest.raises(WorkerError, match="needs vllm"):  # the same worker, again
            WorkerSampler(tmp_path / "policy", settings, data_dir=tmp_path)
        assert worker_status(tmp_path)["pid"] == status["pid"]
    finally:
        assert stop_worker(tmp_path)
    with pytest.raises(ProcessLookupError):
        os.kill(status["pid"], 0)
    assert worker_status(tmp_path) is None
