import json
import shutil

import pytest

from labeling.demo_task import demo_prompts
from training import demo_policy
from training.demo_policy import BUILD_FILE, build_demo_policy, demo_sample_quality


def _busy(stop) -> None:
    """A CPU-heavy process's worth of work beside the build (a spinning child process)."""
    while not stop.is_set():
        pass


@pytest.mark.slow
def test_build_is_the_same_on_a_busy_machine_as_on_an_idle_one(tmp_path):
    """A fixed thread count and step count: the same bytes whatever else the cores are doing."""
    import multiprocessing

    from safetensors.torch import load_file

    config = dict(n_corpus=400, n_heldout=32, steps=12, batch_size=8)
    idle = demo_policy._build(
        tmp_path / "idle", demo_policy.DemoPolicyConfig(**config), progress=False
    )
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    hogs = [context.Process(target=_busy, args=(stop,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        busy = demo_policy._build(
            tmp_path / "busy", demo_policy.DemoPolicyConfig(**config), progress=False
        )
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    assert idle["final_loss"] == busy["final_loss"] and idle["threads"] == busy["threads"] == 2
    a = load_file(str(tmp_path / "idle" / "model.safetensors"))
    b = load_file(str(tmp_path / "busy" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != 0).any() for k in a)


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
    assert build_demo_policy(demo_policy_dir, progress=False) == metrics
    assert weights.stat().st_mtime_ns == mtime  # read from the cache, not rebuilt
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
