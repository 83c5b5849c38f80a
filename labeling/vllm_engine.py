"""One vLLM engine whose policy changes in place, checked against the checkpoint it loaded.

    engine = VLLMEngine(settings)                  # GenerationSettings; nothing starts yet
    report = engine.load(policy_path)              # {"how": started | reloaded | restarted | ...}
    rows = engine.sample(prompts, n=8, temperatures=[1.0, 0.7], seed=0)
    engine.release()                               # sleep (or stop) while a DPO child trains
    engine.stop()

`load` of another checkpoint of the same architecture reloads its weights into the running engine
(`collective_rpc("reload_weights", weights_path=...)`, vLLM's in-place reload) and resets the
prefix cache, whose entries were computed with the old weights. Then it checks that the engine
serves the new policy: the log-probabilities vLLM gives a few fixed conversations
(`CHECK_CONVERSATIONS`) against those of the same checkpoint in transformers, in float32 on the
CPU (`reference_logprobs`). An engine that kept serving its old weights after a sync is a known
failure (vLLM #9744, TRL #5312); when the check fails the engine is restarted on the checkpoint
and checked again, and the report and the log say which happened. The mean absolute difference
per token must stay within `generation.vllm_check_tolerance` (by default 0.2 in bfloat16, where
SmolLM2 and its DPO-trained versions measured 0.06 to 0.125 from float32 transformers, and versions
one round apart 0.41 to 0.82 from each other; 0.01 in float32). A policy change smaller than the
engine's own rounding noise cannot be told from a stale engine by it.

A checkpoint that is a PEFT LoRA adapter (`adapter_config.json`) is served as an adapter over its
base model (`LoRARequest`), with no weights reloaded. A checkpoint of another architecture, or
other engine settings, means a restart.

vLLM is imported here only inside methods: this module is imported by the generation worker,
which runs in an environment with vLLM, and by nothing that must start fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labeling.generation import (
    PromptLike,
    Sample,
    as_messages,
    cpu_vllm_window,
    fast_bf16,
    model_window,
    render_prompt,
    resolve_device,
    split_temperatures,
)
from storage.files import write_atomic
from storage.settings import GenerationSettings
from storage.text import model_text

log = logging.getLogger("prefloop.vllm")

GiB = 1 << 30
CPU_KV_CACHE_GIB = 2  # on a CPU, unless VLLM_CPU_KVCACHE_SPACE says otherwise
ADAPTER_CONFIG = "adapter_config.json"
CHECK_FILE = "prefloop_check.json"  # the check's reference, saved with a trained checkpoint
CHECK_TOKENS = 24  # tokens an adapter's check has the engine generate per conversation
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Settings that shape the engine itself: a change restarts it. The rest apply per request.
ENGINE_FIELDS = (
    "device",
    "dtype",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "vllm_reproducible",
)
# config.json keys that may differ between two checkpoints of one architecture.
CONFIG_NOISE = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype")

# Fixed conversations whose log-probabilities show which weights an engine serves.
CHECK_CONVERSATIONS: list[list[dict[str, str]]] = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris, on the Seine."},
    ],
    [
        {"role": "user", "content": "Write a haiku about the sea."},
        {
            "role": "assistant",
            "content": "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps time.",
        },
    ],
    [
        {"role": "user", "content": "How do I reverse a list in Python?"},
        {
            "role": "assistant",
            "content": "Use reversed(items) for an iterator, or items[::-1] for a new list.",
        },
    ],
]


class PolicyCheckError(RuntimeError):
    """The engine does not serve the checkpoint it was asked to, even after a restart."""


@dataclass(frozen=True)
class PolicyCheck:
    passed: bool
    mean_abs: float  # mean |vLLM - transformers| log-probability per token
    max_abs: float
    tolerance: float
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_info(path: str | Path) -> tuple[str, int]:
    """(base model path, LoRA rank) of a PEFT adapter directory."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(path) / ADAPTER_CONFIG}: no base_model_name_or_path")
    return base, int(config.get("r", 8))


def checkpoint_stamp(path: str | Path) -> tuple[str, tuple]:
    """What identifies a checkpoint's weights on disk: its resolved path and the size and mtime
    of each weight file (a directory replaced in place gets a new stamp)."""
    path = Path(path).resolve()
    files = (
        sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    )
    return str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def architecture(path: str | Path) -> dict[str, Any]:
    """config.json without the keys that differ between checkpoints of one architecture."""
    config = json.loads((Path(path) / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in CONFIG_NOISE}


def check_sequences(tokenizer) -> list[list[int]]:
    """Token ids of `CHECK_CONVERSATIONS`, through the chat template when there is one."""
    sequences = []
    for conversation in CHECK_CONVERSATIONS:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(as_messages(conversation), tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer("\n".join(m["content"] for m in conversation))["input_ids"]
        sequences.append(list(ids))
    return sequences


def reference_logprobs(
    path: str | Path, sequences: Sequence[Sequence[int]], dtype: str = "float32"
) -> list[list[float]]:
    """log p(token t | tokens < t) for t >= 1 of each sequence, by transformers on the CPU:
    what the checkpoint at `path` (a model, or a LoRA adapter over its base) gives."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype)
    if is_adapter(path):
        from peft import PeftModel

        base, _ = adapter_info(path)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    out = []
    with torch.inference_mode():
        for ids in sequences:
            tokens = torch.tensor([list(ids)])
            logits = model(input_ids=tokens).logits[0, :-1].float()  # (len - 1, vocab)
            logprobs = logits.log_softmax(dim=-1).gather(1, tokens[0, 1:, None])[:, 0]
            out.append(logprobs.tolist())
    del model
    return out


def _weight_files(path: str | Path) -> list[list]:
    """The weight files' names, sizes and mtimes (`checkpoint_stamp`'s, as JSON has them): a
    directory renamed into place keeps them."""
    return [list(entry) for entry in checkpoint_stamp(path)[1]]


def write_check_reference(path: str | Path) -> None:
    """Save the check's reference (`reference_logprobs` of `check_sequences`) beside a new
    checkpoint, for the weight files it was computed from. The training job does this while the
    checkpoint is still its own, so an engine loading it skips the transformers pass (about half
    of an in-place reload's second on SmolLM2 and 2 cores)."""
    from transformers import AutoTokenizer

    sequences = check_sequences(AutoTokenizer.from_pretrained(str(path)))
    data = {
        "weights": _weight_files(path),
        "sequences": sequences,
        "logprobs": reference_logprobs(path, sequences),
    }
    write_atomic(Path(path) / CHECK_FILE, json.dumps(data))


def stored_reference(path: str | Path, sequences: Sequence[Sequence[int]]) -> list | None:
    """The reference `write_check_reference` saved for these weights and these sequences; None
    when there is none, or the weights or the tokenization differ (then it is computed)."""
    try:
        data = json.loads((Path(path) / CHECK_FILE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("weights") != _weight_files(path) or data.get("sequences") != [
        list(ids) for ids in sequences
    ]:
        return None
    return data.get("logprobs")


def compare(
    served: Sequence[Sequence[float]], reference: Sequence[Sequence[float]], tolerance: float
) -> PolicyCheck:
    diffs = [
        abs(a - b)
        for s, r in zip(served, reference, strict=True)
        for a, b in zip(s, r, strict=True)
    ]
    mean_abs = sum(diffs) / len(diffs)
    return PolicyCheck(
        passed=mean_abs <= tolerance,
        mean_abs=round(mean_abs, 5),
        max_abs=round(max(diffs), 5),
        tolerance=tolerance,
        tokens=len(diffs),
    )


# The check's tolerance by engine dtype (`generation.vllm_check_tolerance` unset). SmolLM2 in
# bfloat16 is 0.06 from float32 transformers, but DPO-trained versions of it 0.09 to 0.125 (their
# float32 weights round coarser than pi_0's, dequantized from 4 bits): 0.12 failed a chat-demo
# round on a freshly started engine. Versions one DPO round apart are 0.41 to 0.82 apart, so a
# stale engine stays far past 0.2. In float32 the engine is 0.00001 from transformers.
CHECK_TOLERANCE = {"bfloat16": 0.2, "float16": 0.2, "float32": 0.01}


def check_tolerance(settings: GenerationSettings) -> float:
    if settings.vllm_check_tolerance is not None:
        return settings.vllm_check_tolerance
    return CHECK_TOLERANCE[engine_dtype(settings)]


def engine_dtype(settings: GenerationSettings) -> str:
    """The same rule as the transformers sampler: bfloat16 where it is fast (auto)."""
    if settings.dtype != "auto":
        return settings.dtype
    return "bfloat16" if fast_bf16(resolve_device(settings.device)) else "float32"


class WorkerExtension:
    """Methods added to vLLM's workers (`worker_extension_cls`), called by name through
    `collective_rpc`; `self` is the worker."""

    def repack_tied_lm_head(self) -> bool:
        """After an in-place reload. vLLM's CPU backend packs each linear layer's weight for
        its GEMM when a model loads; an LM head tied to the embedding (SmolLM2's) has no weights
        of its own in a checkpoint, so the reload refreshes the embedding but leaves the head's
        packed copy stale, and the engine keeps the old policy's output layer (the check caught
        it: 0.12 nats per token off after an embedding-only change). Pack it again from the
        reloaded embedding. Elsewhere there is nothing to do."""
        from vllm.platforms import current_platform

        model = self.get_model()
        head, body = getattr(model, "lm_head", None), getattr(model, "model", None)
        embed = getattr(body, "embed_tokens", None)
        if not current_platform.is_cpu() or head is None or embed is None:
            return False
        if getattr(head, "weight", None) is not getattr(embed, "weight", None):
            return False  # not tied: the reload loaded and packed the head itself
        head.quant_method.process_weights_after_loading(head)
        return True


class VLLMEngine:
    """A vLLM engine held across policies; see the module's docstring."""

    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self.llm = None
        self.model: str | None = None  # the path the engine was started on
        self.lora_rank: int | None = None  # LoRA enabled, up to this rank
        self.weights: tuple | None = None  # checkpoint_stamp of the full model in it
        self.policy: tuple | None = None  # checkpoint_stamp of what it serves (maybe an adapter)
        self.lora_request = None  # the adapter it serves, when the policy is one
        self.asleep = False
        self._adapter_ids: dict[tuple, int] = {}
        self._references: dict[tuple, list[list[float]]] = {}
        self.history: list[dict[str, Any]] = []  # one entry per load, newest last

    # The engine's life.

    def _start(self, model: str, lora_rank: int | None) -> None:
        from vllm import LLM, envs
        from vllm.platforms import current_platform

        settings = self.settings
        # A scheduler in a process of its own starts stepping as the first request of a call
        # reaches it, so which requests share a batch, and so the bfloat16 numerics of each,
        # depend on timing: in this process, a call's requests are all queued first. (An
        # engine started in this process froze vLLM's environment: thawed for the new one.)
        envs.disable_envs_cache()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if settings.vllm_reproducible else "1"
        kwargs: dict[str, Any] = {
            "model": model,
            "dtype": engine_dtype(settings),
            "tensor_parallel_size": settings.tensor_parallel_size,
            "seed": settings.seed,
            "enable_sleep_mode": current_platform.is_sleep_mode_available(),
            "worker_extension_cls": f"{__name__}.WorkerExtension",
        }
        if current_platform.is_cpu():
            # A seeded request whose prefill is split over steps rewinds its generator, which
            # only CUDA generators can do: whole prefills only, however long the batch. A step
            # then holds a whole sequence, so a model whose window is longer than a step (32k
            # for Qwen2.5, 128k for Llama 3.2) is served with the step's window: vLLM refuses
            # to start otherwise. Prompts past it are left out before they reach the engine.
            window = cpu_vllm_window(settings)
            kwargs.update(
                enable_chunked_prefill=False, max_num_batched_tokens=window, enforce_eager=True
            )
            if (model_window(model) or 0) > window:
                kwargs["max_model_len"] = window
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB * GiB
        else:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        if lora_rank is not None:
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
        started = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.model, self.lora_rank = model, lora_rank
        self.weights = checkpoint_stamp(model)
        self.asleep = False
        self._adapter_ids.clear()
        log.info("vLLM engine started on %s in %.1fs", model, time.perf_counter() - started)

    def stop(self) -> None:
        """Shut the engine down (its processes end); the next load starts a new one."""
        if self.llm is not None:
            import gc

            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()
        self.model = self.weights = self.policy = self.lora_request = None

    def release(self) -> dict[str, Any]:
        """Free the engine's memory while another process needs it (a DPO child training):
        `generation.vllm_release` sleep (level 2: weights and KV cache dropped, the next load
        reloads), stop, or keep; auto sleeps where vLLM has a sleep mode (CUDA) and keeps
        elsewhere, where stopping would cost a cold start."""
        mode = self.settings.vllm_release
        if self.llm is None:
            return {"released": "nothing", "mode": mode}
        if mode == "auto":
            from vllm.platforms import current_platform

            mode = "sleep" if current_platform.is_sleep_mode_available() else "keep"
        if mode == "sleep" and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True
            self.weights = self.policy = self.lora_request = None  # its weights are gone
        elif mode == "stop":
            self.stop()
        log.info("vLLM engine released: %s", mode)
        return {"released": mode}

    # Policies.

    def configure(self, settings: GenerationSettings) -> None:
        """New settings: a change to the engine's own fields restarts it at the next load."""
        changed = any(getattr(settings, f) != getattr(self.settings, f) for f in ENGINE_FIELDS)
        if changed and self.llm is not None:
            log.info("vLLM engine settings changed: restarting at the next load")
            self.stop()
        self.settings = settings

    def load(self, path: str | Path) -> dict[str, Any]:
        """Serve the checkpoint at `path`: kept when it serves it already, else the weights
        reloaded in place (an adapter: switched) and checked, with a restart as the fallback.
        Returns what happened: {"how", "seconds", "check", "fallback"}."""
        started = time.perf_counter()
        path = str(Path(path).resolve())
        stamp = checkpoint_stamp(path)
        if self.llm is not None and not self.asleep and stamp == self.policy:
            return {"how": "kept", "seconds": 0.0, "policy": path}
        adapter = is_adapter(path)
        base, rank = adapter_info(path) if adapter else (path, None)
        report: dict[str, Any] = {"policy": path}
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if self.llm is None:
            self._start(base, rank)
            report["how"] = "started"
        elif not self._fits(base, rank):
            self.stop()
            self._start(base, rank)
            report["how"] = "restarted"
        elif checkpoint_stamp(base) != self.weights:
            self._reload(base)
            report["how"] = "reloaded"
        else:  # the weights are there: an adapter on them, or none
            report["how"] = "adapter" if adapter else "switched"
        self._serve(path, stamp, adapter)
        check = self.check(path)
        if check is not None and not check.passed:
            log.warning(
                "vLLM engine does not serve %s after %s (mean |diff| %.4f > %.4f): restarting",
                path,
                report["how"],
                check.mean_abs,
                check.tolerance,
            )
            report["fallback"] = {"after": report["how"], "check": check.as_dict()}
            self.stop()
            self._start(base, rank)
            self._serve(path, stamp, adapter)
            report["how"] = "restarted"
            check = self.check(path)
            if not check.passed:
                self.policy = None
                raise PolicyCheckError(
                    f"vLLM serves {path} with log-probs {check.mean_abs:.4f} from transformers' "
                    f"per token after a restart (tolerance {check.tolerance}): a fresh engine "
                    "cannot serve stale weights, so this is the engine's numerics or a loading "
                    "fault; generation.vllm_check_tolerance sets the tolerance (0: no check)"
                )
        report["check"] = check.as_dict() if check is not None else None
        report["seconds"] = round(time.perf_counter() - started, 3)
        self.history.append(report)
        log.info(
            "vLLM engine serves %s: %s in %.2fs%s",
            path,
            report["how"],
            report["seconds"],
            f", check mean |diff| {check.mean_abs:.4f}" if check is not None else "",
        )
        return report

    def _fits(self, base: str, rank: int | None) -> bool:
        """Whether the running engine can serve a checkpoint on `base` without a restart."""
        if rank is not None and (self.lora_rank is None or rank > self.lora_rank):
            return False
        try:
            return architecture(base) == architecture(self.model)
        except (OSError, ValueError):
            return False

    def _reload(self, path: str) -> None:
        self.weights = None  # until the reload is through
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.collective_rpc("repack_tied_lm_head")
        self.llm.reset_prefix_cache()
        self.weights = checkpoint_stamp(path)

    def _serve(self, path: str, stamp: tuple, adapter: bool) -> None:
        self.lora_request = None
        if adapter:
            from vllm.lora.request import LoRARequest

            lora_id = self._adapter_ids.setdefault(stamp, len(self._adapter_ids) + 1)
            self.lora_request = LoRARequest(f"policy-{lora_id}", lora_id, path)
        self.policy = stamp

    def check(self, path: str) -> PolicyCheck | None:
        """Compare the engine's log-probs of `CHECK_CONVERSATIONS` with transformers' for the
        checkpoint at `path`; None when the check is off (tolerance 0)."""
        tolerance = check_tolerance(self.settings)
        if not tolerance:
            return None
        if self.lora_rank is not None:
            return self._check_by_generation(path, tolerance)
        sequences = check_sequences(self.llm.get_tokenizer())
        key = checkpoint_stamp(path)
        if key not in self._references:
            self._references[key] = stored_reference(path, sequences) or reference_logprobs(
                path, sequences
            )
        return compare(self.served_logprobs(sequences), self._references[key], tolerance)

    def _check_by_generation(self, path: str, tolerance: float) -> PolicyCheck:
        """The check on an engine with LoRA on: vllm-cpu 0.32 cannot give prompt log-probs
        there (its CPU LoRA logits kernel fails on them and kills the engine, with or without
        an adapter in the request), so the engine answers the conversations' user turns
        greedily and its log-probs of the tokens it chose are compared with transformers' for
        the same tokens."""
        from vllm import SamplingParams

        tokenizer = self.llm.get_tokenizer()
        prompts = []
        for conversation in CHECK_CONVERSATIONS:
            text, has_special = render_prompt(tokenizer, conversation[:1])
            prompts.append(tokenizer(text, add_special_tokens=not has_special)["input_ids"])
        params = SamplingParams(max_tokens=CHECK_TOKENS, temperature=0.0, logprobs=0)
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        served, sequences = [], []
        for ids, out in zip(prompts, outputs, strict=True):
            tokens = list(out.outputs[0].token_ids)
            served.append(
                [entry[t].logprob for t, entry in zip(tokens, out.outputs[0].logprobs, strict=True)]
            )
            sequences.append(ids + tokens)
        reference = reference_logprobs(path, sequences)
        reference = [r[len(r) - len(s) :] for r, s in zip(reference, served, strict=True)]
        return compare(served, reference, tolerance)

    def served_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(token t | tokens < t) for t >= 1 of each sequence, from the engine."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in sequences],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        return [
            [
                entry[token].logprob
                for token, entry in zip(ids[1:], out.prompt_logprobs[1:], strict=True)
            ]
            for ids, out in zip(sequences, outputs, strict=True)
        ]

    # Sampling.

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
    ) -> list[list[Sample]]:
        """`n` samples per prompt, split over `temperatures`, from the policy `load` gave;
        one `SamplingParams(n, temperature, top_p, seed, max_tokens)` per prompt and temperature."""
        from vllm import SamplingParams

        if self.llm is None or self.policy is None:
            raise RuntimeError("no policy loaded: call load(path) first")
        settings = self.settings
        # A prompt whose KV cache an earlier call left behind decodes with other numerics (in
        # bfloat16 its samples drift apart mid-reply): each call starts cold, so that the same
        # prompts and seed give the same samples. Within the call, a prompt's n samples share it.
        self.llm.reset_prefix_cache()
        tokenizer = self.llm.get_tokenizer()
        inputs = []
        for prompt in prompts:
            text, has_special = render_prompt(tokenizer, prompt)
            ids = tokenizer(text, add_special_tokens=not has_special)["input_ids"]
            inputs.append({"prompt_token_ids": ids})
        rows: list[list[Sample]] = [[] for _ in prompts]
        for group, (temperature, k) in enumerate(split_temperatures(n, temperatures)):
            # vLLM refuses n > 1 with greedy decoding: one reply, repeated (it is the same one)
            copies = k if temperature == 0 else 1
            params = [
                SamplingParams(
                    n=k // copies,
                    temperature=temperature,
                    top_p=settings.top_p if temperature else 1.0,
                    seed=seed + 1_000_003 * group + i,
                    max_tokens=settings.max_new_tokens,
                )
                for i in range(len(prompts))
            ]
            outputs = self.llm.generate(
                inputs, params, lora_request=self.lora_request, use_tqdm=False
            )
            for i, output in enumerate(outputs):
                for completion in output.outputs * copies:
                    rows[i].append(
                        Sample(
                            text=model_text(completion.text.strip()),
                            temperature=temperature,
                            top_p=params[i].top_p,
                            max_new_tokens=settings.max_new_tokens,
                            seed=params[i].seed,
                            backend="vllm",
                            n_tokens=len(completion.token_ids),
                            finished=completion.finish_reason == "stop",
                        )
                    )
        return rows
