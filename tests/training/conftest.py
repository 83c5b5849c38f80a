"""A data directory with the demo policy deployed as v0, the demo prompts, and helpers that put
labeled pairs in the database the way an iteration's labeling would."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlmodel import select

from storage import crud
from storage.db import transaction, upgrade
from storage.models import (
    Choice,
    IterationState,
    Label,
    LabelSource,
    Pair,
    Prompt,
    Response,
    Split,
)
from storage.runtime import Runtime, open_runtime

# Small enough for 2 shared CPU cores: an iteration trains a couple of DPO steps, 8 eval prompts.
SMALL = {
    "dpo": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 5e-4},
    "eval": {"n_prompts": 8, "max_new_tokens": 48},
    "loop": {"max_attempts": 2, "auto_continue": False},
}
# For the plumbing tests, which set the gate themselves: any win-rate deploys.
OPEN_GATE = {"win_rate_threshold": 0.0}


def unlabeled_iteration_runtime(data_dir, **sections) -> Runtime:
    """A data directory (settings `sections`) whose iteration 0 is labeling with no labels at
    all: a training job on it fails before loading any model, unless its setup fails first."""
    from tests.factories import make_policy

    rt = open_runtime(data_dir, **sections)
    upgrade(rt.engine)
    with transaction(rt.engine) as session:
        make_policy(session)
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
    return rt


def make_loop_runtime(data_dir, policy_dir, **flags) -> Runtime:
    from training.demo_policy import add_demo_prompts, register_demo_policy

    (data_dir / "policies").mkdir(parents=True)
    shutil.copytree(policy_dir, data_dir / "policies" / "v0")
    sections = {name: {**SMALL.get(name, {}), **flags.get(name, {})} for name in {*SMALL, *flags}}
    rt = open_runtime(data_dir, **sections)
    upgrade(rt.engine)
    add_demo_prompts(engine=rt.engine)
    register_demo_policy(engine=rt.engine, policy_dir=data_dir / "policies" / "v0")
    return rt


def labeled_iteration(rt: Runtime, n_pairs: int, *, flip: bool = False) -> int:
    """Open an iteration and give it `n_pairs` human-labeled pairs (best reply vs worst on train
    prompts, the better by the gold judge chosen; `flip`: the worse chosen). Returns its id."""
    from labeling.demo_task import gold_judge, reference_reply

    with transaction(rt.engine) as session:
        deployed = crud.deployed_policy(session=session)
        iteration = crud.start_iteration(
            session=session, policy_in_id=deployed.id, human_quota=n_pairs, human_budget=n_pairs
        )
        annotator = crud.create_user(
            session=session, name=f"annotator{iteration.k}", role="annotator", password_hash=None
        )
        query = select(Prompt).where(Prompt.split == Split.train).order_by(Prompt.id)
        prompts = list(session.exec(query.limit(n_pairs)))
        for prompt in prompts:
            a, b = reference_reply(prompt.text, "best"), reference_reply(prompt.text, "worst")
            ra = Response(prompt_id=prompt.id, policy_id=deployed.id, text=a)
            rb = Response(prompt_id=prompt.id, policy_id=deployed.id, text=b)
            session.add_all([ra, rb])
            session.flush()
            pair = Pair(
                prompt_id=prompt.id,
                response_a_id=ra.id,
                response_b_id=rb.id,
                iteration_id=iteration.id,
            )
            session.add(pair)
            session.flush()
            a_better = gold_judge(prompt.text, a) > gold_judge(prompt.text, b)
            choice = Choice.a if a_better != flip else Choice.b
            session.add(
                Label(
                    pair_id=pair.id, user_id=annotator.id, source=LabelSource.human, choice=choice
                )
            )
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
        return iteration.id


def reference_pairs(rt: Runtime, split: Split, n: int) -> list[tuple[str, str, str]]:
    """(prompt, best reply, worst reply) on the first `n` prompts of a split."""
    from labeling.demo_task import reference_reply

    with transaction(rt.engine, readonly=True) as session:
        query = select(Prompt.text).where(Prompt.split == split).order_by(Prompt.id)
        texts = list(session.exec(query.limit(n)))
    return [(t, reference_reply(t, "best"), reference_reply(t, "worst")) for t in texts]


def weights(policy_path) -> dict:
    """A checkpoint's tensors by name."""
    from safetensors.torch import load_file

    return load_file(str(Path(policy_path) / "model.safetensors"))


def tiny_causal_lm(out_dir: Path) -> Path:
    """A 2-layer Llama with a BPE tokenizer and no chat template, as a user's base model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, how are you today?"] * 10, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def nul_writing_lm(out_dir: Path) -> Path:
    """`tiny_causal_lm` made to write nothing but its byte-level token for NUL (U+0000), as any
    byte-level model may: every layer's output zeroed, so the last hidden state is the constant
    token embedding, which only the NUL row of the head scores."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_causal_lm(out_dir)
    nul = AutoTokenizer.from_pretrained(out_dir).convert_tokens_to_ids("\u0100")  # byte 0x00
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[nul] = 1.0
    model.save_pretrained(out_dir)
    return out_dir


def dpo_margin(policy_path: str, ref_path: str, pairs: list[tuple[str, str, str]]) -> float:
    """Mean DPO implicit reward margin log(pi/ref)(chosen) - log(pi/ref)(rejected) over
    (prompt, chosen, rejected) triples, teacher-forced through the chat template."""
    from training.implicit_reward import implicit_reward, policy_logprobs

    def logps(path):
        return policy_logprobs(path, pairs, max_length=4096)

    return implicit_reward(logps(policy_path), logps(ref_path), beta=1.0)["margin"]
