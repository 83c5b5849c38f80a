"""Bringing a model: SmolLM2-135M-Instruct converted from the wheel's GGUF file, a causal LM without
a chat template, the errors a wrong path gets, and one DPO step on the real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from storage.settings import DPOSettings, GenerationSettings
from tests.training.conftest import dpo_margin, tiny_causal_lm
from training.base_model import PolicyError, check_policy, convert_gguf, smollm2_gguf

runner = CliRunner()


def _init(*args: str):
    return runner.invoke(cli, ["init", *args])


@pytest.fixture(autouse=True)
def _admin_password(monkeypatch):
    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-test-password-1")


@pytest.mark.slow
def test_smollm2_converts_to_a_checkpoint_that_loads_and_generates_with_its_chat_template(
    smollm2_dir,
):
    from labeling.generation import load_sampler, render_prompt

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # else every reload would quantize again
    assert (smollm2_dir / "model.safetensors").is_file()
    info = check_policy(smollm2_dir)
    assert (info.architecture, info.chat_template, info.eos_token) == (
        "LlamaForCausalLM",
        True,
        "<|im_end|>",
    )
    sampler = load_sampler(smollm2_dir, GenerationSettings(max_new_tokens=24, device="cpu"))
    try:
        text, templated = render_prompt(sampler.tokenizer, "What is the capital of France?")
        assert templated and "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
        assert text.endswith("<|im_start|>assistant\n")
        [[greedy]] = sampler.sample(["What is the capital of France?"], n=1, temperatures=[0.0])
    finally:
        sampler.close()
    assert "Paris" in greedy.text and greedy.finished  # the real model, not noise, answered
    # converting again reuses the checkpoint
    mtime = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smollm2_gguf(), smollm2_dir)["digest"]
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_causal_lm_without_a_chat_template_is_registered_and_samples_plain_text(tmp_path):
    from labeling.generation import load_sampler, render_prompt

    model_dir = tiny_causal_lm(tmp_path / "base")
    info = check_policy(model_dir)
    assert not info.chat_template
    result = _init("--policy", str(model_dir), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert "no chat template: prompts are fed as plain text" in result.output
    assert "policy v0: registered and deployed" in result.output
    status = json.loads(
        runner.invoke(cli, ["status", "--json", "--data-dir", str(tmp_path / "data")]).output
    )
    assert status["deployed_policy"]["version"] == 0
    sampler = load_sampler(model_dir, GenerationSettings(max_new_tokens=5, device="cpu"))
    try:
        assert render_prompt(sampler.tokenizer, "hello world") == ("hello world", False)
        [[a, b]] = sampler.sample(["hello world"], n=2, temperatures=[1.0])
    finally:
        sampler.close()
    assert a.n_tokens >= 1 and b.n_tokens >= 1


def test_the_policy_setting_registers_like_the_flag(tmp_path):
    model_dir = tiny_causal_lm(tmp_path / "base")
    data = tmp_path / "data"
    data.mkdir()
    (data / "prefloop.toml").write_text(f'[policy]\ninit_path = "{model_dir}"\n')
    result = _init("--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert f"policy: {model_dir.resolve()}" in result.output


def _vit(path: Path) -> Path:
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: p / "missing.gguf", "no such GGUF file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no usable config.json"),
        (_vit, "model_type 'vit' is not a causal LM"),
        (
            lambda p: shutil.copytree(
                tiny_causal_lm(p / "t"),
                p / "noweights",
                ignore=lambda d, n: [f for f in n if f.endswith(".safetensors")],
            ),
            "no weights",
        ),  # fmt: skip
        (lambda p: "nobody/no-such-model", "`hf download nobody/no-such-model` fetches it"),
    ],
)
def test_an_unusable_policy_is_refused_naming_it_and_nothing_is_registered(tmp_path, make, message):
    given = make(tmp_path)
    result = _init("--policy", str(given), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 1
    assert message in result.output and Path(str(given)).name in result.output
    assert not (tmp_path / "data" / "prefloop.db").exists()  # checked before anything is written


def test_a_second_init_with_another_policy_says_what_it_would_replace(tmp_path):
    first = tiny_causal_lm(tmp_path / "first")
    second = tiny_causal_lm(tmp_path / "second")
    data = str(tmp_path / "data")
    assert _init("--policy", str(first), "--data-dir", data).exit_code == 0
    again = _init("--policy", str(first), "--data-dir", data)
    assert again.exit_code == 0 and "registered already" in again.output
    other = _init("--policy", str(second), "--data-dir", data)
    assert other.exit_code == 1
    assert f"pi_0 is v0 at {first.resolve()}" in other.output
    assert f"registering {second.resolve()} would replace it" in other.output


def test_check_policy_accepts_no_file():
    with pytest.raises(PolicyError, match="a file; a policy is a checkpoint directory"):
        check_policy(__file__)


@pytest.mark.slow
def test_one_dpo_step_on_smollm2_raises_the_chosen_reply_over_the_rejected(smollm2_dir, tmp_path):
    """The chat demo's DPO settings, one optimizer step on 8 real pairs: the teacher-forced DPO
    margin log(pi/ref)(chosen) - log(pi/ref)(rejected) rises from 0 on those pairs."""
    from labeling.chat_task import SEED_PREFERENCES
    from storage.settings import DEMO_DEFAULTS
    from training.dpo import train

    rows = [json.loads(line) for line in SEED_PREFERENCES.read_text().splitlines()[:8]]
    records = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]
    dpo = DPOSettings(**{**DEMO_DEFAULTS["chat"]["dpo"], "per_device_train_batch_size": 8})
    metrics = train(
        init_path=str(smollm2_dir),
        ref_path=str(smollm2_dir),
        records=records,
        dpo=dpo,
        output_dir=tmp_path / "v1",
    )
    assert metrics["steps"] == 1
    triples = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert dpo_margin(str(tmp_path / "v1"), str(smollm2_dir), triples) > 0.5


def test_a_model_writing_nul_characters_gets_its_round_stored_on_either_database(
    tmp_path, database
):
    """A byte-level model may write a NUL (SmolLM2's token 190 is one), which PostgreSQL cannot
    store: the round's replies are kept, each NUL as U+FFFD, on SQLite and PostgreSQL alike."""
    from sqlmodel import select

    from storage.db import transaction
    from storage.models import Response
    from storage.runtime import open_runtime
    from tests.training.conftest import nul_writing_lm

    data = str(tmp_path / "data")
    assert (
        _init("--policy", str(nul_writing_lm(tmp_path / "nul")), "--data-dir", data).exit_code == 0
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "say hello"}\n{"prompt": "and once more"}\n')
    assert (
        runner.invoke(cli, ["prompts", "import", str(prompts), "--data-dir", data]).exit_code == 0
    )
    result = runner.invoke(cli, ["generate", "--data-dir", data])
    assert result.exit_code == 0, result.output
    rt = open_runtime(Path(data))
    try:
        with transaction(rt.engine, readonly=True) as session:
            texts = session.exec(select(Response.text)).all()
    finally:
        rt.engine.dispose()
    assert len(texts) >= 2 and all(t and set(t) == {"\ufffd"} for t in texts), texts
