"""vLLM's engine on SmolLM2-135M-Instruct (CPU build, .venv-vllm): the chat template and its stop
token, and a policy loaded in place and checked against its checkpoint, with the restart fallback.
The sampling contract both backends share is in test_generation.py."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from labeling.generation import ContextFit, render_prompt, sampler_window_cap
from labeling.vllm_engine import (
    VLLMEngine,
    check_sequences,
    check_tolerance,
    compare,
    reference_logprobs,
    stored_reference,
    write_check_reference,
)
from storage.settings import GenerationSettings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def perturb_checkpoint(src, dst, scale: float = 0.06, seed: int = 0):
    """A copy of the checkpoint at `src` with Gaussian noise (`scale` times each matrix's
    std) on every matrix, the tied embedding included: another policy of one architecture.
    At 0.03 its log-probabilities were 0.398 from SmolLM2's in bf16 on an AMD CPU, under the
    2 x 0.2 a stale check must be off by; at 0.06 they were 0.875 there."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {
        name: (w + scale * w.std() * torch.randn(w.shape, generator=generator)).contiguous()
        if w.ndim == 2
        else w
        for name, w in weights.items()
    }
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def perturbed_dir(smollm2_dir, tmp_path_factory):
    return perturb_checkpoint(smollm2_dir, tmp_path_factory.mktemp("perturbed") / "policy")


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    """One engine for the module (a cold start is the expensive part); each test leaves it
    serving SmolLM2."""
    engine = VLLMEngine(GenerationSettings(max_new_tokens=32, device="cpu"))
    report = engine.load(smollm2_dir)
    assert report["how"] == "started" and report["check"]["passed"]
    yield engine
    engine.stop()


def test_prompts_go_through_the_chat_template(engine):
    tokenizer = engine.llm.get_tokenizer()
    text, has_special = render_prompt(tokenizer, "Hello there")
    assert has_special
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text == render_prompt(tokenizer, [{"role": "user", "content": "Hello there"}])[0]


def test_replies_stop_at_the_end_of_turn_token(engine):
    rows = engine.sample(["Say hi."], n=4, temperatures=[0.7], seed=0)
    finished = [s for s in rows[0] if s.finished]
    assert finished  # <|im_end|> ended these, before max_new_tokens
    for s in finished:
        assert s.n_tokens < 32 and "<|im_end|>" not in s.text and "<|im_start|>" not in s.text


def test_reload_serves_the_new_weights(engine, smollm2_dir, perturbed_dir):
    tokenizer = engine.llm.get_tokenizer()
    tolerance = check_tolerance(engine.settings)
    sequences = check_sequences(tokenizer)
    # Before the reload the engine serves SmolLM2: the perturbed checkpoint's check fails.
    stale = engine.check(str(perturbed_dir))
    assert not stale.passed and stale.mean_abs > 2 * tolerance
    try:
        report = engine.load(perturbed_dir)
        assert report["how"] == "reloaded" and "fallback" not in report
        assert report["check"]["passed"] and report["check"]["mean_abs"] <= tolerance
        served = engine.served_logprobs(sequences)
        new = compare(served, reference_logprobs(perturbed_dir, sequences), tolerance)
        old = compare(served, reference_logprobs(smollm2_dir, sequences), tolerance)
        assert new.passed and not old.passed and new.mean_abs < old.mean_abs / 2
        assert engine.load(perturbed_dir)["how"] == "kept"  # the same checkpoint again
    finally:
        assert engine.load(smollm2_dir)["how"] == "reloaded"


def test_a_reference_saved_with_the_checkpoint_spares_the_transformers_pass(
    engine, smollm2_dir, tmp_path, monkeypatch
):
    """The training job saves the check's reference beside a new checkpoint
    (`write_check_reference`); loading it then runs no transformers forward pass."""
    from labeling import vllm_engine

    policy = perturb_checkpoint(smollm2_dir, tmp_path / "trained", seed=7)
    write_check_reference(policy)
    saved = stored_reference(policy, check_sequences(engine.llm.get_tokenizer()))
    assert saved is not None and len(saved) == len(vllm_engine.CHECK_CONVERSATIONS)

    def no_transformers_pass(*args, **kwargs):
        raise AssertionError("the check computed a reference the checkpoint carries")

    monkeypatch.setattr(vllm_engine, "reference_logprobs", no_transformers_pass)
    try:
        report = engine.load(policy)
        assert report["how"] == "reloaded" and report["check"]["passed"]
    finally:
        monkeypatch.undo()
        assert engine.load(smollm2_dir)["how"] == "reloaded"


def test_a_stale_reload_falls_back_to_a_restart(engine, smollm2_dir, perturbed_dir, caplog):
    """The field failure (vLLM #9744, TRL #5312): a sync that leaves the old weights in place.
    Here the reload is skipped outright; the check catches it and the engine restarts."""
    real_reload = engine._reload
    engine._reload = lambda path: engine.llm.reset_prefix_cache()
    caplog.set_level(logging.INFO, logger="prefloop.vllm")
    try:
        report = engine.load(perturbed_dir)
    finally:
        engine._reload = real_reload
    assert report["how"] == "restarted"
    assert report["fallback"]["after"] == "reloaded" and not report["fallback"]["check"]["passed"]
    assert report["check"]["passed"]
    assert "does not serve" in caplog.text and "restarting" in caplog.text
    assert engine.load(smollm2_dir)["how"] == "reloaded"


def test_a_lora_policy_is_served_as_an_adapter(engine, smollm2_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    model = get_peft_model(base, config)
    for name, weight in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: an adapter that changes nothing
            torch.nn.init.normal_(weight, std=0.1)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)

    report = engine.load(adapter)  # the engine restarts once, with LoRA enabled
    assert report["how"] == "restarted" and report["check"]["passed"]
    assert engine.lora_request is not None and engine.lora_rank == 8
    # the adapter answers, not the base model: its replies' log-probs are not the base's
    assert not engine._check_by_generation(
        str(smollm2_dir), check_tolerance(engine.settings)
    ).passed
    rows = engine.sample(["List three fruits."], n=2, temperatures=[0.7], seed=0)
    assert len(rows[0]) == 2 and all(s.text for s in rows[0])
    # the base model again, and the adapter once more: no weights move, no restart
    assert engine.load(smollm2_dir)["how"] == "switched" and engine.lora_request is None
    assert engine.load(adapter)["how"] == "adapter"
    assert engine.load(smollm2_dir)["how"] == "switched"


def test_a_model_whose_window_passes_a_cpu_step_is_served_with_the_steps(
    engine, smollm2_dir, tmp_path
):
    """On a CPU, vLLM prefills whole prompts, so one step must hold a sequence: a model with a
    32k window (Qwen2.5's) did not start with 8192-token steps ("max_num_batched_tokens (8192)
    is smaller than max_model_len (32768)"). It is served with the step's window, and the
    prompts past that are the ones a round leaves out."""
    long_window = tmp_path / "long-window"
    shutil.copytree(smollm2_dir, long_window)
    config = json.loads((long_window / "config.json").read_text())
    (long_window / "config.json").write_text(
        json.dumps(config | {"max_position_embeddings": 32768})
    )

    report = engine.load(long_window)
    assert report["how"] == "restarted" and report["check"]["passed"]
    assert engine.llm.llm_engine.model_config.max_model_len == 8192
    served = engine.settings.model_copy(update={"backend": "vllm"})
    fit = ContextFit(long_window, max_new_tokens=32, cap=sampler_window_cap(served))
    assert fit.window == 8192 and fit.fits("Say hi.") and not fit.fits("word " * 9000)
    assert engine.sample(["Say hi."], n=1, temperatures=[0.0])[0][0].text
    assert engine.load(smollm2_dir)["how"] == "restarted"
