"""What a DPO round cannot train on: the pairs dpo.max_length leaves out or cuts, and those whose
conversation the chat template refuses, are counted; a round left with nothing fails saying why
(a 2-layer model: seconds)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from storage.settings import DPOSettings
from tests.training.conftest import tiny_causal_lm
from training.dpo import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = {"prompt": "hello", "chosen": " world", "rejected": " you"}
LONG_PROMPT = {"prompt": "how are you today? " * 20, "chosen": " world", "rejected": " you"}
LONG_REPLY = {"prompt": "hello", "chosen": " how are you today?" * 20, "rejected": " you"}


def _tokens(model, text: str) -> int:
    return len(AutoTokenizer.from_pretrained(model)(text)["input_ids"])


def test_dpo_counts_the_pairs_max_length_leaves_out_or_cuts(tmp_path):
    model = str(tiny_causal_lm(tmp_path / "m"))
    # well clear of the limit either way, whatever special tokens TRL adds
    assert _tokens(model, "hello world") <= 4 and _tokens(model, LONG_PROMPT["prompt"]) >= 40
    assert _tokens(model, LONG_REPLY["chosen"]) >= 40
    dpo = DPOSettings(max_length=16, per_device_train_batch_size=2)
    metrics = train(
        init_path=model,
        ref_path=None,
        records=[SHORT, LONG_PROMPT, LONG_REPLY],
        dpo=dpo,
        output_dir=tmp_path / "out",
    )
    assert (metrics["n_pairs"], metrics["pairs_left_out"], metrics["pairs_cut"]) == (3, 1, 1)


def test_a_round_whose_every_prompt_fills_max_length_fails_naming_it(tmp_path):
    model = str(tiny_causal_lm(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"every pair's prompt \(2\) fills dpo.max_length \(16 "):
        train(
            init_path=model,
            ref_path=None,
            records=[LONG_PROMPT, LONG_PROMPT | {"chosen": " hello"}],
            dpo=DPOSettings(max_length=16),
            output_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_pair_whose_conversation_the_chat_template_refuses_is_left_out_and_counted(tmp_path):
    """A seed pair imported with a system turn, for a model whose template refuses one (as
    Gemma's does): TRL's tokenization raised TemplateError and failed the round."""
    model = tiny_causal_lm(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}\n{% endfor %}"
    )
    tokenizer.save_pretrained(model)

    def chat(*turns, chosen=" world", rejected=" you"):
        return {
            "prompt": [{"role": role, "content": text} for role, text in turns],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    system = chat(("system", "be terse"), ("user", "hello"))
    records = [chat(("user", "hello")), system, chat(("user", "how are you"), chosen=" today")]
    dpo = DPOSettings(max_length=64, per_device_train_batch_size=2)
    metrics = train(
        init_path=str(model), ref_path=None, records=records, dpo=dpo, output_dir=tmp_path / "out"
    )
    assert (metrics["n_pairs"], metrics["pairs_refused_by_template"]) == (3, 1)
    assert (metrics["pairs_left_out"], metrics["pairs_cut"]) == (0, 0)
    with pytest.raises(ValueError, match=r"refuses every pair's conversation \(1\): System role"):
        train(
            init_path=str(model),
            ref_path=None,
            records=[system],
            dpo=dpo,
            output_dir=tmp_path / "again",
        )
