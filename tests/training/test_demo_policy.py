import json
import os
import shutil
import time

import pytest

from labeling.demo_task import demo_prompts
from training import demo_policy
from training.demo_policy import BUILD_FILE, build_demo_policy, demo_sample_quality


def test_threads_follow_the_free_cores_not_the_load_average(monkeypatch):
    """Right after `make run`'s pip install the one-minute load average is high on idle cores."""
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 20.0, 10.0))
    monkeypatch.setattr(demo_policy, "_cores", lambda: [0, 1])
    assert demo_policy._threads(None, 2.0) == 2
    assert demo_policy._threads(None, 1.8) == 2  # others use a fifth of a core
    assert demo_policy._threads(None, 1.6) == 1  # OpenMP threads would wait for each other
    assert demo_policy._threads(None, 0.1) == 1
    assert demo_policy._threads(None, None) == 2  # no /proc/stat: every core
    assert demo_policy._threads(3, 0.1) == 3  # asked for
    monkeypatch.setattr(demo_policy, "_cores", lambda: list(range(64)))
    assert demo_policy._threads(None, 64.0) == 8


def test_free_cores_count_this_process_own_work_as_free():
    free_cores = demo_policy._FreeCores()
    started, cpu = time.monotonic(), time.process_time()
    while time.monotonic() < started + 0.5:  # busy: the core it runs on is still free for it
        pass
    own = (time.process_time() - cpu) / (time.monotonic() - started)
    free = free_cores.read()
    if free is None:
        pytest.skip("no /proc/stat")
    assert own - 0.1 <= free <= len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_build_metrics_and_cache(demo_policy_dir):
    saved = json.loads((demo_policy_dir / BUILD_FILE).read_text())
    metrics = saved["metrics"]
    assert metrics["final_loss"] < 0.5 * metrics["initial_loss"]
    # A fixed step count, whatever the machine's load: pi_0 is the same build everywhere.
    assert metrics["steps"] == saved["config"]["steps"] == 800 and not metrics["stopped_early"]
    assert 0.5e6 < metrics["n_params"] < 3e6

    weights = demo_policy_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert build_demo_policy(demo_policy_dir, progress=False) == metrics
    assert time.monotonic() - started < 2
    assert weights.stat().st_mtime_ns == mtime
    assert not [p for p in demo_policy_dir.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_loads_with_auto_classes_and_generates(demo_policy_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_policy_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_policy_dir)
    prompt = next(text for text, split in demo_prompts() if split == "eval")
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=96)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert new[-1] == tokenizer.eos_token_id
    assert len(tokenizer.decode(new, skip_special_tokens=True).split()) >= 3


@pytest.mark.slow
def test_chat_template_prompt_is_a_prefix(demo_policy_dir):
    # TRL's DPO splits prompt and completion where the two tokenizations diverge.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_policy_dir)
    messages = [{"role": "user", "content": "Hi, this is Maria. Where is order #12345?"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": "Hello Maria, I checked order #12345."}]
    )["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id


@pytest.mark.slow
def test_samples_leave_room_to_improve_and_are_cached(demo_policy_dir, tmp_path, monkeypatch):
    policy_dir = tmp_path / "v0"
    shutil.copytree(demo_policy_dir, policy_dir)
    stats = demo_sample_quality(policy_dir, n_prompts=48, n_per_prompt=4)
    assert stats["n"] == 192 and stats["params"]["n_prompts"] == 48
    assert stats["std"] > 1.0
    assert stats["mean"] < 0.8 * stats["best_mean"]
    assert stats["q100"] >= 7.0
    assert stats["eos_rate"] > 0.9
    # kept in the build record: a second call does not sample
    assert json.loads((policy_dir / BUILD_FILE).read_text())["samples"] == stats
    monkeypatch.setattr(demo_policy, "sample_gold_distribution", None)
    assert demo_sample_quality(policy_dir, n_prompts=48, n_per_prompt=4) == stats
    assert build_demo_policy(policy_dir, progress=False)["steps"] == 800  # the build still loads
