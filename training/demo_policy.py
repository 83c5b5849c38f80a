"""The demo policy: a BPE tokenizer and a 0.56M-parameter Llama trained from scratch on CPU.

The result is an ordinary Hugging Face checkpoint directory (model, tokenizer with a chat template,
``prefloop_demo.json`` with the build config and metrics), addressed by path like any other policy.
Two layers rather than four: on 2 CPU cores a build of about 80 seconds allows 800 steps, and the
smaller model learns the task's structure (and to copy the customer's name) in fewer of them.
The step count and torch's thread count are fixed, not a time budget or the cores left idle:
the thread count changes how reductions split and so the floating-point result. The demo's pi_0
(and every number measured on it) is then the same on a busy machine as on an idle one of the
same CPU kind; only the wall time differs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labeling.demo_task import NAMES, demo_corpus, demo_prompts, gold_judge, reference_reply
from storage.files import write_atomic

BUILD_FILE = "prefloop_demo.json"
BUILD_VERSION = 3

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")


@dataclass
class DemoPolicyConfig:
    seed: int = field(default=0, metadata={"help": "Seed for the corpus, the init and batching."})
    n_corpus: int = field(default=8000, metadata={"help": "(prompt, reply) pairs to train on."})
    n_heldout: int = field(default=256, metadata={"help": "Corpus pairs kept out to measure loss."})
    vocab_size: int = field(default=1024, metadata={"help": "Byte-level BPE vocabulary size."})
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width."})
    num_layers: int = field(default=2, metadata={"help": "Transformer blocks."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    steps: int = field(default=800, metadata={"help": "Optimizer steps (fixed, not timed)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per step."})
    lr: float = field(default=7e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=30, metadata={"help": "Linear warmup steps."})
    max_seconds: float = field(
        default=1800.0,
        metadata={"help": "Safety ceiling: a machine this slow stops early (metrics say so)."},
    )
    threads: int = field(
        default=2,
        metadata={
            "help": "torch CPU threads, fixed: another count gives other floating-point results "
            "(2 threads ran 1.7x faster than 1 on 2 idle cores)."
        },
    )
    copy_weight: float = field(
        default=10.0, metadata={"help": "Loss weight of reply tokens copied from the prompt."}
    )


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits one by one: ticket numbers are random, merged digit chunks would waste vocabulary.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        padding_side="left",  # generation pads on the left; training code pads on its own
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def _encode(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(input_ids, prompt_length) per pair, formatted exactly as the chat template does."""
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    # Rendering the jinja template 10k times costs seconds; check one against it instead.
    texts = [f"{bos}<|user|>{p}<|assistant|>{r}{eos}" for p, r in pairs]
    messages = [{"role": "user", "content": pairs[0][0]}]
    assert texts[0] == tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": pairs[0][1]}], tokenize=False
    )
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    rows = [(ids, ids.index(assistant) + 1) for ids in tokenizer(texts)["input_ids"]]
    assert rows[0][0][: rows[0][1]] == prompt_ids
    return rows


def _batch(rows: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input_ids, attention_mask and labels (reply tokens only), each (B, T)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, : len(ids)] = 1
    return input_ids, mask, labels


def _bucketed(rows, batch_size: int, generator) -> list[int]:
    """One epoch's order: shuffled, then sorted by length within windows of 16 batches and the
    batches shuffled, so that a batch wastes little compute on padding."""
    import torch

    perm = torch.randperm(len(rows), generator=generator).tolist()
    window = 16 * batch_size
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: len(rows[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [i for j in shuffled for i in batches[j]]


def _heldout_loss(model, rows, pad_id: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            input_ids, mask, labels = _batch(rows[start : start + 64], pad_id)
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss) * n
            count += n
    model.train()
    return total / count


def _load_build(out_dir: Path, config: DemoPolicyConfig) -> dict | None:
    try:
        saved = json.loads((out_dir / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("version") != BUILD_VERSION or saved.get("config", {}).get("seed") != config.seed:
        return None
    return saved["metrics"]


def build_demo_policy(
    out_dir: Path, *, seed: int = 0, max_seconds: float = 1800, progress: bool = True
) -> dict:
    """Train the demo tokenizer and policy into ``out_dir``; return metrics.

    A complete build already in ``out_dir`` (same seed) is returned as is. The checkpoint is
    written to a temporary directory beside ``out_dir`` and renamed, so a reader never sees half a
    policy. Metrics: initial_loss and final_loss (held-out reply tokens, nats), steps, seconds,
    n_params, and stopped_early when the max_seconds ceiling cut the build short.
    """
    config = DemoPolicyConfig(seed=seed, max_seconds=max_seconds)
    return _build(Path(out_dir), config, progress=progress)


def _build(out_dir: Path, config: DemoPolicyConfig, *, progress: bool) -> dict:
    cached = _load_build(out_dir, config)
    if cached is not None:
        return cached
    started = time.monotonic()

    import torch

    torch.manual_seed(config.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        corpus = demo_corpus(config.n_corpus + config.n_heldout, seed=config.seed)
        tokenizer = _train_tokenizer([f"{p}\n{r}" for p, r in corpus], config.vocab_size)
        encoded = _encode(tokenizer, corpus)
        model = _new_model(tokenizer, config)
        deadline = started + config.max_seconds
        metrics = _train(
            model,
            tokenizer,
            encoded,
            config,
            deadline=deadline,
            progress=progress,
        )
    finally:
        torch.set_num_threads(old_threads)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    build = {"version": BUILD_VERSION, "config": asdict(config), "metrics": metrics}
    _save_atomically(out_dir, model, tokenizer, build)
    return _load_build(out_dir, config) or metrics


def _new_model(tokenizer, config: DemoPolicyConfig):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,  # input and output share the identity of a copied token
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=96,
    )
    return model


def _train(model, tokenizer, encoded, config: DemoPolicyConfig, *, deadline: float, progress):
    """AdamW on reply tokens for `config.steps` steps (the deadline is a safety ceiling)."""
    import torch
    from tqdm.auto import tqdm

    train_rows, heldout_rows = encoded[: config.n_corpus], encoded[config.n_corpus :]
    pad_id = tokenizer.pad_token_id
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    # The customer's name (and ticket digits): tokens a reply copies from the prompt. Weighting
    # them up makes the copying attention form within the few hundred steps of the build.
    copy_ids = torch.zeros(len(tokenizer), dtype=torch.bool)
    for word in [*NAMES, *"0123456789"]:
        for ids in (tokenizer.encode(word), tokenizer.encode(" " + word)):
            if len(ids) == 1:
                copy_ids[ids[0]] = True

    initial_loss = _heldout_loss(model, heldout_rows, pad_id)
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    started = time.monotonic()
    step, running = 0, initial_loss
    bar = tqdm(total=config.steps, desc="demo policy", disable=not progress, leave=False)
    model.train()
    while step < config.steps and time.monotonic() < deadline:
        done = step / config.steps  # cosine decay to 5% of the peak
        warm = min(1.0, (step + 1) / config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))
        if len(order) < config.batch_size:
            order += _bucketed(train_rows, config.batch_size, generator)
        batch = [train_rows[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]

        input_ids, mask, labels = _batch(batch, pad_id)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        targets = labels[:, 1:]  # (B, T-1)
        weights = (targets != -100).float()
        weights *= torch.where(copy_ids[targets.clamp(min=0)], config.copy_weight, 1.0)
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        loss = (token_loss * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        step += 1
        running = 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    return {
        "initial_loss": round(initial_loss, 4),
        "final_loss": round(_heldout_loss(model, heldout_rows, pad_id), 4),
        "steps": step,
        "stopped_early": step < config.steps,
        "train_seconds": round(time.monotonic() - started, 2),
        "threads": config.threads,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _save_atomically(out_dir: Path, model, tokenizer, build: dict) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
        if out_dir.exists() and _load_build(out_dir, DemoPolicyConfig(**build["config"])):
            return  # another process finished the same build first
        if out_dir.exists():
            # An incomplete or different build: move it aside first, rename cannot replace a
            # non-empty directory.
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale.", dir=out_dir.parent))
            os.replace(out_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sample_gold_distribution(
    policy_dir: Path, prompts: list[str], n_per_prompt: int = 4, seed: int = 0
) -> dict:
    """Sample replies (temperature 1.0) and summarize their gold scores against the best replies.

    Returns mean, std, quantiles (q00..q100) and ``frac_ge_8`` of the samples' scores,
    ``best_mean`` (gold score of ``reference_reply(prompt, "best")`` averaged over the prompts),
    ``eos_rate`` (samples that ended with eos rather than at max_new_tokens) and a few examples.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(DemoPolicyConfig.threads)  # fixed, as in the build: the same samples
    torch.manual_seed(seed)
    try:
        scores, examples, ended = _sample_scores(model, tokenizer, prompts, n_per_prompt)
    finally:
        torch.set_num_threads(old_threads)
    best = [gold_judge(p, reference_reply(p, "best")) for p in prompts]
    ranked = sorted(scores)

    def quantile(q: float) -> float:
        return ranked[min(len(ranked) - 1, int(q * len(ranked)))]

    return {
        "n": len(scores),
        "mean": round(statistics.fmean(scores), 4),
        "std": round(statistics.pstdev(scores), 4),
        **{f"q{int(q * 100):02d}": quantile(q) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)},
        "frac_ge_8": round(sum(s >= 8 for s in scores) / len(scores), 4),
        "best_mean": round(statistics.fmean(best), 4),
        "eos_rate": round(ended / len(scores), 4),
        "examples": examples,
    }


def _sample_scores(model, tokenizer, prompts: list[str], n_per_prompt: int):
    """Gold scores of n_per_prompt samples per prompt, a few examples, how many ended with eos."""
    import torch

    scores: list[float] = []
    examples: list[dict] = []
    ended = 0
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        enc = tokenizer.apply_chat_template(
            [[{"role": "user", "content": p}] for p in chunk],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n_per_prompt,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        ended += int((new == tokenizer.eos_token_id).any(dim=1).sum())
        replies = tokenizer.batch_decode(new, skip_special_tokens=True)
        for i, reply in enumerate(replies):
            prompt = chunk[i // n_per_prompt]
            score = gold_judge(prompt, reply)
            scores.append(score)
            if len(examples) < 8 and i % n_per_prompt == 0:
                examples.append({"prompt": prompt, "reply": reply, "gold": score})
    return scores, examples, ended


def demo_sample_quality(
    policy_dir: Path, *, n_prompts: int = 48, n_per_prompt: int = 4, seed: int = 0
) -> dict:
    """`sample_gold_distribution` of the policy on the first ``n_prompts`` eval prompts, cached
    in the build record (``samples``): the first call samples (seconds), later ones read it.
    Adds ``params`` and ``seconds``."""
    path = Path(policy_dir) / BUILD_FILE
    build = json.loads(path.read_text())
    params = {"n_prompts": n_prompts, "n_per_prompt": n_per_prompt, "seed": seed}
    cached = build.get("samples")
    if isinstance(cached, dict) and cached.get("params") == params:
        return cached
    started = time.monotonic()
    prompts = [text for text, split in demo_prompts() if split == "eval"][:n_prompts]
    stats = sample_gold_distribution(policy_dir, prompts, n_per_prompt=n_per_prompt, seed=seed)
    build["samples"] = {"params": params, "seconds": round(time.monotonic() - started, 2), **stats}
    write_atomic(path, json.dumps(build, indent=2) + "\n")  # a reader never sees half of it
    return build["samples"]


def add_demo_prompts(*, engine) -> tuple[int, int]:
    """Store the demo task's prompts (train and eval splits); returns (added, present already)."""
    from storage import crud
    from storage.db import transaction
    from storage.models import Split

    records = [crud.PromptIn(text=t, source="demo", split=Split(s)) for t, s in demo_prompts()]
    with transaction(engine) as session:
        return crud.add_prompts(session=session, prompts=records)


def register_demo_policy(*, engine, policy_dir: Path, build: dict | None = None) -> bool:
    """Register `policy_dir` as v0, deployed, unless a policy exists; True when it registered."""
    from storage import crud
    from storage.db import transaction
    from storage.models import PolicyStatus

    with transaction(engine) as session:
        if crud.list_policies(session=session):
            return False
        crud.create_policy(
            session=session,
            version=0,
            path=str(Path(policy_dir).resolve()),
            status=PolicyStatus.deployed,
            config={"source": "demo", "build": build or {}},
        )
    return True
