"""DPO with TRL's `DPOTrainer`: prefloop's settings as TRL's config, preference rows as TRL's
dataset, and `train`, which fine-tunes a policy checkpoint and saves the full model.

No process management here: the child process that runs a training job on a job row (progress,
the checkpoint's install, the proxy refit, the evaluation) is `training.dpo_job`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from labeling.generation import fast_bf16
from storage.db import transaction
from storage.settings import DPOSettings, Settings

log = logging.getLogger("prefloop.dpo")


def score_only_completions() -> None:
    """Have TRL's fused LM head score only the completion tokens on every device.

    TRL 1.16's DPO computes per-token log-probabilities in chunks; with its Triton kernels (CUDA,
    XPU) it projects only the positions that carry a label, elsewhere every position of the
    padded batch, prompt and padding included, so that the tile shapes stay fixed for compilers
    like Neuron's. Eager PyTorch on a CPU has no such need, and the wasted positions were most of
    the head's cost, itself about half a SmolLM2 step. Its choice reads the module-level name
    `_use_triton` in `trl.trainer.utils` (and nothing else there does), so this rebinds that name
    to say yes; the kernels keep their own copy and still run in torch off CUDA. Versions other
    than the pinned one are left alone.
    """
    import trl
    import trl.trainer.utils as trl_utils

    if trl.__version__ == "1.16.0":
        trl_utils._use_triton = _labelled_positions_only


def _labelled_positions_only(device) -> bool:
    return True


class DivergedError(RuntimeError):
    """Training left weights that are NaN or infinite."""


def dpo_config_kwargs(dpo: DPOSettings, output_dir: str | Path) -> dict[str, Any]:
    """The keyword arguments of TRL's `DPOConfig` for prefloop's DPO settings (`dpo.trl_args`
    last, so they win)."""
    import torch

    cuda = torch.cuda.is_available()
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "beta": dpo.beta,
        "loss_type": dpo.loss_type,
        "learning_rate": dpo.learning_rate,
        "num_train_epochs": dpo.num_train_epochs,
        "per_device_train_batch_size": dpo.per_device_train_batch_size,
        "gradient_accumulation_steps": dpo.gradient_accumulation_steps,
        "max_length": dpo.max_length,
        "label_smoothing": dpo.label_smoothing,
        "seed": dpo.seed,
        "precompute_ref_log_probs": dpo.precompute_ref_log_probs,
        "use_cpu": not cuda,
        "bf16": fast_bf16("cuda" if cuda else "cpu") if dpo.bf16 is None else dpo.bf16,
        # Small models train faster without it; large ones turn it on through trl_args.
        "gradient_checkpointing": False,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        # A NaN or infinite loss is logged as it is (stored as null), not as the mean of the
        # steps before it: a diverging round shows in its progress.
        "logging_nan_inf_filter": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # Under DDP every parameter takes part in the loss: no extra pass looking for unused ones.
        "ddp_find_unused_parameters": False,
    }
    values.update(dpo.trl_args)
    return values


def dpo_config(dpo: DPOSettings, output_dir: str | Path):
    """TRL's `DPOConfig` from prefloop's DPO settings."""
    from trl import DPOConfig

    return DPOConfig(**dpo_config_kwargs(dpo, output_dir))


def peft_config(dpo: DPOSettings):
    if not dpo.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=dpo.lora_r,
        lora_alpha=dpo.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def preference_records(rows: Iterable[Any], *, chat: bool) -> list[dict[str, Any]]:
    """TRL's preference format from `PreferenceRow`s: conversational when the tokenizer has a
    chat template (the prompt's stored messages, or one user turn), else plain text."""
    records = []
    for row in rows:
        if chat:
            prompt = row.messages or [{"role": "user", "content": row.prompt}]
            records.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": row.chosen}],
                    "rejected": [{"role": "assistant", "content": row.rejected}],
                }
            )
        else:
            records.append({"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected})
    return records


def training_preferences(
    *,
    session,
    iterations: list[int] | None,
    with_seed: bool = False,
    settings: Settings | None = None,
    batch_size: int = 1000,
) -> Iterator[Any]:
    """The decided pairs a training job trains on (`storage.preferences.iter_preferences`);
    under `settings`, the flagged annotators' labels left out (`labeling.gold_filter`) and each
    pair decided by its labels' judgments on `dpo.criterion` when that is set."""
    from storage.gold import GoldRule
    from storage.preferences import iter_preferences

    return iter_preferences(
        session=session,
        iterations=iterations,
        with_seed=with_seed,
        gold=GoldRule.filtering(settings.labeling) if settings else None,
        criterion=settings.dpo.criterion if settings else None,
        batch_size=batch_size,
    )


def load_preferences(
    *,
    engine,
    iterations: list[int] | None,
    with_seed: bool = False,
    settings: Settings | None = None,
) -> list[Any]:
    """`training_preferences`, all of them, in a transaction of their own."""
    with transaction(engine, readonly=True) as session:
        return list(
            training_preferences(
                session=session, iterations=iterations, with_seed=with_seed, settings=settings
            )
        )


def refused_by_template(records: list[dict[str, Any]], tokenizer) -> dict[int, str]:
    """The conversational records (by index) whose prompt and reply the tokenizer's chat
    template refuses, with its message: Gemma's refuses a system turn, Mistral's turns that do
    not alternate. An imported seed pair can hold such a conversation (a round never samples
    one: `labeling.generation.ContextFit.why_not`), and TRL's tokenization raised on it."""
    from jinja2 import TemplateError

    refused: dict[int, str] = {}
    if not getattr(tokenizer, "chat_template", None):
        return refused
    for i, record in enumerate(records):
        if not isinstance(record["prompt"], list):
            continue
        try:
            for reply in (record["chosen"], record["rejected"]):
                tokenizer.apply_chat_template(record["prompt"] + reply, tokenize=False)
        except TemplateError as exc:
            refused[i] = str(exc)
    return refused


def max_length_report(dataset, *, n_pairs: int, max_length: int) -> dict[str, int]:
    """How `dpo.max_length` met the pairs of TRL's tokenized `dataset`: TRL leaves out a pair
    whose prompt alone fills it (no reply token is left to train on) and cuts a longer pair's
    replies at it, from their end. Raises when no pair is left."""
    kept = len(dataset)
    if kept == 0:
        raise ValueError(
            f"every pair's prompt ({n_pairs}) fills dpo.max_length ({max_length} tokens), leaving "
            "no reply token to train on: raise dpo.max_length"
        )
    lengths = zip(
        dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
    )
    cut = sum(len(p) + max(len(c), len(r)) > max_length for p, c, r in lengths)
    return {"pairs_left_out": n_pairs - kept, "pairs_cut": cut}


def train(
    *,
    init_path: str,
    ref_path: str | None,
    records: list[dict[str, Any]],
    dpo: DPOSettings,
    output_dir: Path,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train DPO from `init_path` against `ref_path` (None: against `init_path`) and save the
    full model and tokenizer into `output_dir`. Returns the training metrics."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    torch.set_num_threads(dpo.threads)
    score_only_completions()
    tokenizer = AutoTokenizer.from_pretrained(init_path)
    n_pairs = len(records)
    refused = refused_by_template(records, tokenizer)
    if refused:
        first = next(iter(refused.values()))
        if len(refused) == n_pairs:
            raise ValueError(
                f"the chat template of {init_path} refuses every pair's conversation ({n_pairs}): "
                f"{first}"
            )
        log.warning(
            "DPO: %d of %d pairs left out, their conversation refused by the chat template: %s",
            len(refused),
            n_pairs,
            first,
        )
        records = [record for i, record in enumerate(records) if i not in refused]
    ref_model = None
    if ref_path is not None and Path(ref_path).resolve() != Path(init_path).resolve():
        ref_model = AutoModelForCausalLM.from_pretrained(ref_path)
    args = dpo_config(dpo, output_dir / "trainer")
    trainer = DPOTrainer(
        model=init_path,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config(dpo),
    )
    room = max_length_report(trainer.train_dataset, n_pairs=len(records), max_length=dpo.max_length)
    if room["pairs_left_out"] or room["pairs_cut"]:
        log.warning(
            "DPO on %d pairs: %d left out (their prompt fills dpo.max_length, %d tokens), %d with "
            "replies cut at it",
            len(records),
            room["pairs_left_out"],
            dpo.max_length,
            room["pairs_cut"],
        )
    started = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - started
    diverged = next(
        (name for name, p in trainer.model.named_parameters() if not torch.isfinite(p).all()), None
    )
    if diverged is not None:
        # A step whose loss is NaN or infinite leaves such weights, and nothing would be saved
        # that can generate: the round fails here, before a candidate exists.
        raise DivergedError(
            f"DPO diverged: {diverged} is not finite after {trainer.state.global_step} steps at "
            f"learning rate {dpo.learning_rate:g}; lower dpo.learning_rate"
        )
    if dpo.use_lora:
        # A deployed policy is a complete model, not an adapter.
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))  # every rank takes part under DeepSpeed / FSDP
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    last = steps[-1] if steps else {}
    # A step's margin and accuracy come from its batch alone (the last one may hold 3 pairs):
    # the round's figures are the means over the second half of its steps.
    late = steps[len(steps) // 2 :]

    def late_mean(key: str) -> float | None:
        values = [entry[key] for entry in late if key in entry]
        return sum(values) / len(values) if values else None

    return {
        "n_pairs": n_pairs,
        "pairs_refused_by_template": len(refused),
        **room,
        "steps": trainer.state.global_step,
        "train_loss": output.training_loss,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": last.get("loss"),
        "reward_margin": late_mean("rewards/margins"),
        "reward_accuracy": late_mean("rewards/accuracies"),
        "train_seconds": round(seconds, 2),
        "world_size": trainer.accelerator.num_processes,
    }
