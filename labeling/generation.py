"""Sampling responses from a policy: one small interface, two backends.

    sampler = load_sampler(policy_path, settings.generation)      # transformers or vllm
    rows = sampler.sample(prompts, n=8, temperatures=[1.0, 0.7], seed=0)
    rows[i][j].text, rows[i][j].sampling()                         # j-th sample of prompt i
    sampler.close()

    generate(policy_path, prompts, temperature=0.7, n=1, seed=0)  # -> list[list[str]]

`generate` is the one-call form for evaluation (load, sample, free); use `load_sampler` when
sampling several times from one policy. A prompt is a string or chat messages
(``[{"role": "user", "content": ...}]``); when the tokenizer has a chat template, a string becomes
one user turn and the template is applied with the generation prompt. `n` samples per prompt are
split evenly across `temperatures` (the RLHF Workflow recipe: 8 samples, half at 1.0 and half at
0.7). A temperature of 0 means greedy decoding.

transformers: prompts are left-padded and batched (`batch_size` prompts per call, each expanded to
its samples with `num_return_sequences`); the seed is set before each batch, so the same prompts,
seed and batch size give the same samples. vllm (the optional extra): offline `vllm.LLM`, one
`SamplingParams(n, temperature, top_p, seed, max_tokens)` per prompt and temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from storage.settings import GenerationSettings

PromptLike = str | list[dict[str, str]]


@dataclass(frozen=True)
class Sample:
    text: str
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    backend: str
    n_tokens: int  # generated tokens, the end-of-sequence token included
    finished: bool  # ended with end-of-sequence rather than at max_new_tokens

    def sampling(self) -> dict[str, Any]:
        """What made this text, as stored on the response row."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "backend": self.backend,
            "n_tokens": self.n_tokens,
            "finished": self.finished,
        }


class Sampler(Protocol):
    backend: str

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
    ) -> list[list[Sample]]: ...

    def close(self) -> None: ...


def split_temperatures(n: int, temperatures: Sequence[float]) -> list[tuple[float, int]]:
    """n samples spread evenly over the temperatures, the first ones taking the remainder:
    (8, [1.0, 0.7]) -> [(1.0, 4), (0.7, 4)]."""
    if n < 1 or not temperatures:
        raise ValueError(f"need n >= 1 and a temperature (got n={n}, {list(temperatures)})")
    base, extra = divmod(n, len(temperatures))
    counts = [base + (i < extra) for i in range(len(temperatures))]
    return [(float(t), k) for t, k in zip(temperatures, counts, strict=True) if k > 0]


def as_messages(prompt: PromptLike) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or not all(isinstance(m, dict) and "content" in m for m in prompt):
        raise ValueError(f"a chat prompt is a list of {{role, content}} messages (got {prompt!r})")
    return list(prompt)


def render_prompt(tokenizer, prompt: PromptLike) -> tuple[str, bool]:
    """The text fed to the model, and whether it carries its own special tokens."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            as_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        return text, True
    if isinstance(prompt, str):
        return prompt, False
    return "\n".join(m["content"] for m in prompt), False


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersSampler:
    backend = "transformers"

    def __init__(self, policy_path: str | Path, settings: GenerationSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(policy_path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(policy_path), dtype=dtype)
        self.model.to(self.device).eval()

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[list[Sample]]:
        batch_size = batch_size or self.settings.batch_size
        rendered = [render_prompt(self.tokenizer, p) for p in prompts]
        rows: list[list[Sample]] = [[] for _ in prompts]
        for group, (temperature, k) in enumerate(split_temperatures(n, temperatures)):
            for start in range(0, len(prompts), batch_size):
                chunk = rendered[start : start + batch_size]
                batch_seed = seed + 1_000_003 * group + start
                outputs = self._generate(chunk, k, temperature, batch_seed)
                for offset, samples in enumerate(outputs):
                    rows[start + offset].extend(samples)
        return rows

    def _generate(
        self, chunk: list[tuple[str, bool]], k: int, temperature: float, seed: int
    ) -> list[list[Sample]]:
        import torch

        # A template renders its own special tokens; a plain string gets the tokenizer's.
        special = not chunk[0][1]
        encoded = self.tokenizer(
            [text for text, _ in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=special,
        ).to(self.device)
        settings = self.settings
        sampling = {"do_sample": True, "temperature": temperature, "top_p": settings.top_p}
        if temperature == 0:
            sampling = {"do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                **sampling,
                num_return_sequences=k if temperature else 1,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        if not temperature:  # greedy: k copies of the one answer
            out = out.repeat_interleave(k, dim=0)
        new = out[:, encoded["input_ids"].shape[1] :].cpu()  # (len(chunk) * k, new tokens)
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        eos_ids.discard(None)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        results: list[list[Sample]] = []
        for i in range(len(chunk)):
            samples = []
            for j in range(k):
                tokens = new[i * k + j].tolist()
                ended = next((t for t, tok in enumerate(tokens) if tok in eos_ids), None)
                samples.append(
                    Sample(
                        text=texts[i * k + j].strip(),
                        temperature=temperature,
                        top_p=settings.top_p if temperature else 1.0,
                        max_new_tokens=settings.max_new_tokens,
                        seed=seed,
                        backend=self.backend,
                        n_tokens=len(tokens) if ended is None else ended + 1,
                        finished=ended is not None,
                    )
                )
            results.append(samples)
        return results

    def close(self) -> None:
        import gc

        import torch

        self.model = None  # closing twice is harmless
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMSampler:
    backend = "vllm"

    def __init__(self, policy_path: str | Path, settings: GenerationSettings):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError(
                "generation.backend = 'vllm' needs the vllm extra: pip install 'prefloop[vllm]'"
            ) from exc
        self.settings = settings
        self.llm = LLM(
            model=str(policy_path),
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
    ) -> list[list[Sample]]:
        from vllm import SamplingParams

        settings = self.settings
        inputs = []
        for prompt in prompts:
            text, has_special = render_prompt(self.tokenizer, prompt)
            ids = self.tokenizer(text, add_special_tokens=not has_special)["input_ids"]
            inputs.append({"prompt_token_ids": ids})
        rows: list[list[Sample]] = [[] for _ in prompts]
        for group, (temperature, k) in enumerate(split_temperatures(n, temperatures)):
            params = [
                SamplingParams(
                    n=k,
                    temperature=temperature,
                    top_p=settings.top_p if temperature else 1.0,
                    seed=seed + 1_000_003 * group + i,
                    max_tokens=settings.max_new_tokens,
                )
                for i in range(len(prompts))
            ]
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
            for i, output in enumerate(outputs):
                for completion in output.outputs:
                    rows[i].append(
                        Sample(
                            text=completion.text.strip(),
                            temperature=temperature,
                            top_p=params[i].top_p,
                            max_new_tokens=settings.max_new_tokens,
                            seed=params[i].seed,
                            backend=self.backend,
                            n_tokens=len(completion.token_ids),
                            finished=completion.finish_reason == "stop",
                        )
                    )
        return rows

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()


def load_sampler(policy_path: str | Path, settings: GenerationSettings) -> Sampler:
    """The sampler the settings name (generation.backend), loaded from a checkpoint path."""
    if settings.backend == "vllm":
        return VLLMSampler(policy_path, settings)
    if settings.backend == "transformers":
        return TransformersSampler(policy_path, settings)
    raise ValueError(f"generation.backend {settings.backend!r}: expected transformers or vllm")


def generate(
    policy_path: str | Path,
    prompts: Sequence[PromptLike],
    *,
    temperature: float,
    n: int = 1,
    seed: int = 0,
    max_new_tokens: int | None = None,
    settings: GenerationSettings | None = None,
) -> list[list[str]]:
    """Sample `n` texts per prompt at one temperature (0: greedy) and free the model again."""
    settings = settings or GenerationSettings()
    if max_new_tokens is not None:
        settings = settings.model_copy(update={"max_new_tokens": max_new_tokens})
    sampler = load_sampler(policy_path, settings)
    try:
        rows = sampler.sample(prompts, n=n, temperatures=[temperature], seed=seed)
    finally:
        sampler.close()
    return [[s.text for s in row] for row in rows]
