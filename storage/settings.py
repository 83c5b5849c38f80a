"""prefloop's settings: one object, built by `load_settings`, never at import.

Layers, lowest first: defaults < `<data-dir>/prefloop.toml` < `PREFLOOP_*` environment (nested
keys with `__`, e.g. `PREFLOOP_DPO__BETA=0.2`) < CLI flags < changes an admin made at run time
(the `setting` table, applied by `with_overrides`). Sections are plain models that the labeling and
training code take as arguments, so those packages never read the environment themselves.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import pydantic_settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_DATA_DIR = Path("prefloop-data")
SETTINGS_FILE = "prefloop.toml"

# The parsed prefloop.toml of the `load_settings` call in progress (a source below the env).
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("prefloop_file_values", default=None)


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PolicySettings(Section):
    init_path: str | None = Field(
        default=None,
        description="The SFT policy pi_0: a Hugging Face model path or hub id. "
        "Unset: the embedded demo policy built by `prefloop init --demo`.",
    )


class GenerationSettings(Section):
    backend: Literal["transformers", "vllm"] = "transformers"
    n_samples: int = Field(8, ge=2, le=64, description="Responses sampled per prompt.")
    temperatures: list[float] = Field(
        default=[1.0, 0.7],
        min_length=1,
        description="The samples are split evenly across these temperatures (paper: 1.0, 0.7).",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=8192)
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")
    prompts_per_round: int = Field(64, ge=1, description="Prompts sampled per iteration.")
    first_round_prompts: int | None = Field(
        None,
        ge=1,
        description="Prompts of the round `prefloop init` queues (unset: prompts_per_round); "
        "a smaller one makes a new data directory ready to label sooner.",
    )
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="The sampler's weights. auto: bfloat16 where it is fast (a CUDA GPU that "
        "supports it, a CPU with AMX), float32 elsewhere.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM only.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM only.")
    vllm_python: str | None = Field(
        None,
        description="vLLM only: the Python that runs the generation worker (one with vllm "
        "installed, e.g. .venv-vllm/bin/python; a relative path is taken from the data "
        "directory). Unset: the Python running prefloop.",
    )
    vllm_check_tolerance: float | None = Field(
        None,
        ge=0.0,
        description="vLLM only: after loading a policy, the largest mean absolute difference "
        "per token between the engine's log-probs of a few fixed conversations and "
        "transformers' for the same checkpoint (float32); past it the engine restarts. "
        "Unset: 0.2 for a bfloat16 engine, 0.01 for float32 (measured on SmolLM2 and its "
        "DPO-trained versions: 0.06 to 0.125, and 0.00001; versions a round apart differ by "
        "0.41 to 0.82). 0 turns the check off.",
    )
    vllm_reproducible: bool = Field(
        True,
        description="vLLM only: run the engine's scheduler in the worker's own process, so that "
        "a call's requests are all queued before its first step and the same prompts and seed "
        "give the same samples (vLLM's VLLM_ENABLE_V1_MULTIPROCESSING=0). false: the scheduler "
        "in a process of its own, overlapping with the model (faster on a GPU), and samples "
        "that vary with the timing of the requests.",
    )
    vllm_release: Literal["auto", "sleep", "stop", "keep"] = Field(
        "auto",
        description="vLLM only: what the generation worker does with its memory while a DPO "
        "child trains. sleep: drop weights and KV cache (vLLM's sleep mode, CUDA), reloaded "
        "after; stop: end the engine, started again after; keep: nothing. auto: sleep where "
        "vLLM can, keep elsewhere (a CPU).",
    )

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(t <= 0 for t in value):
            raise ValueError("every temperature must be > 0")
        return value


class ProxySettings(Section):
    kind: Literal["embedded", "reward_model", "judge"] = "embedded"
    path: str | None = Field(None, description="Reward model path (kind = reward_model).")
    judge: str = Field(
        "labeling.demo_task:gold_judge", description="module:callable (kind = judge)."
    )
    ensemble_size: int = Field(8, ge=1, le=64, description="Bootstrapped Bradley-Terry heads.")
    l2: float = Field(
        0.1,
        gt=0.0,
        description="Ridge penalty of the Bradley-Terry heads (0.1: the best held-out accuracy "
        "on the demo task of 0.03 to 3).",
    )


class PairingSettings(Section):
    strategy: Literal["max_min", "max_random", "random", "uncertain", "explore"] = "max_min"
    pairs_per_prompt: int = Field(1, ge=1, le=8)
    enhancer: Literal["temperature", "previous"] = Field(
        "temperature",
        description="explore: the enhancer is the policy sampled hotter, or the previous policy.",
    )
    enhancer_temperature: float = Field(
        1.3, gt=0.0, description="explore: the enhancer samples hotter than the main policy."
    )
    enhancer_samples: int = Field(
        4, ge=1, le=64, description="explore: enhancer samples per prompt."
    )
    uncertainty: Literal["ensemble", "covariance"] = Field(
        "ensemble",
        description="uncertain/explore: the proxy's ensemble disagreement, or the norm of the "
        "feature difference under the inverse covariance (arXiv 2312.11456).",
    )


class RoutingSettings(Section):
    enabled: bool = Field(False, description="Let the proxy label the pairs it is sure of.")
    tau: float = Field(0.35, ge=0.0, le=0.5, description="Confident when |P - 0.5| >= tau.")
    max_uncertainty: float = Field(
        0.05,
        ge=0.0,
        description="... and uncertainty <= this (0.05: at a 25% human budget, proxy labels "
        "0.946 right for 0.912 at 0.1, and a higher win-rate, on MiniLM features alone; "
        "`python -m benchmarks routing`).",
    )
    audit_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of confident pairs still sent to humans."
    )
    human_budget: int = Field(200, ge=0, description="Most pairs sent to humans per iteration.")


MAX_CRITERIA = 8
CRITERION_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class LabelingSettings(Section):
    overlap: int = Field(1, ge=1, le=16, description="Annotators per pair.")
    lease_seconds: int = Field(600, ge=10, description="A claimed pair returns to the queue.")
    suggestion_mode: Literal["shown", "after_vote", "off"] = "after_vote"
    paused: bool = False
    gold_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of each annotator's claims that go to gold pairs (known answers, "
        "`prefloop gold import`) they have not had, while there is other work for them.",
    )
    min_gold_accuracy: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="An annotator whose gold accuracy is below this (after min_gold_seen gold "
        "pairs) is flagged: with gold_filter on, their labels are left out of DPO, the "
        "proxy's refit and the export until an admin lifts the flag.",
    )
    min_gold_seen: int = Field(
        10, ge=1, description="Gold pairs an annotator labels before their accuracy may flag them."
    )
    gold_filter: bool = Field(
        True,
        description="Leave flagged annotators' labels out of DPO data, the proxy's refit and the "
        "export (off: flag them only).",
    )
    too_fast_seconds: float = Field(
        2.0,
        ge=0.0,
        description="A label made faster than this counts as too fast on the annotator "
        "dashboard (its share per annotator).",
    )
    criteria: list[str] = Field(
        default_factory=list,
        max_length=MAX_CRITERIA,
        description="Criteria judged beside the overall choice, each A, B or tie (e.g. "
        '["helpfulness", "harmlessness"]): stored per label, exported as columns, their '
        "agreement reported; dpo.criterion trains on one. Names: lowercase letters, digits, _.",
    )

    @field_validator("criteria")
    @classmethod
    def _criterion_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not CRITERION_NAME.fullmatch(name):
                raise ValueError(
                    f"criterion {name!r}: 1-32 lowercase letters, digits or _, a letter first"
                )
        if len(set(value)) != len(value):
            raise ValueError("the same criterion twice")
        return value


class LoopSettings(Section):
    human_quota: int = Field(
        64,
        ge=1,
        description="Human labels that trigger training (or all the round's human pairs "
        "labeled, when there are fewer).",
    )
    interval_minutes: float | None = Field(None, gt=0, description="Also train on a timer.")
    cron: str | None = Field(None, description="Also train on a crontab schedule.")
    data_scope: Literal["all", "latest"] = "all"
    reference: Literal["sft", "previous"] = Field(
        "sft", description="DPO reference model: pi_0 (the paper's default) or pi_k."
    )
    start: Literal["deployed", "sft"] = Field(
        "deployed",
        description="What a round's DPO starts from: the deployed pi_k (iterative), or pi_0 "
        "again, retrained on all the pairs so far (needs data_scope = 'all').",
    )
    auto_continue: bool = Field(
        True, description="After a deploy (or a rejection), generate the next round."
    )
    quota_check_seconds: float = Field(
        10.0, gt=0, description="How often the scheduler checks the human-label quota."
    )
    max_attempts: int = Field(
        3, ge=1, description="Tries of a training job (a crashed or killed one is retried)."
    )
    stale_after_seconds: float = Field(
        600.0, gt=0, description="A running job without a heartbeat this long counts as dead."
    )

    @model_validator(mode="after")
    def _restart_keeps_the_data(self) -> LoopSettings:
        if self.start == "sft" and self.data_scope != "all":
            raise ValueError(
                "loop.start = 'sft' retrains pi_0 every round: with loop.data_scope = "
                f"{self.data_scope!r} it would forget the earlier rounds' pairs; set "
                "data_scope = 'all'"
            )
        return self


# TRL 1.16's DPO losses (`DPOConfig.loss_type`; an unknown one fails only at the first step), and
# those that read `label_smoothing`.
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


class DPOSettings(Section):
    beta: float = Field(0.1, gt=0.0)
    loss_type: str = "sigmoid"
    learning_rate: float = Field(
        5e-4,
        gt=0.0,
        description="Tuned for the ~1M-parameter demo policy; billion-parameter models want "
        "about 5e-7 (the RLHF Workflow paper's), or 5e-6 with LoRA.",
    )
    num_train_epochs: float = Field(2.0, gt=0.0)
    per_device_train_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(256, ge=8)
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="The share of labels taken to be flipped, for the losses that model it "
        "(loss_type robust, exo_pair, aot, aot_unpaired); TRL's sigmoid loss has no such term.",
    )
    seed: int = 0
    use_lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    accelerate_config: str | None = Field(
        None,
        description="Train through `accelerate launch` with this config: a file (relative to the "
        "data directory) or the name of one shipped in training/accelerate/ (cpu_2proc, one_gpu, "
        "multi_gpu_ddp, deepspeed_zero2, deepspeed_zero3).",
    )
    precompute_ref_log_probs: bool = Field(
        False, description="Score the data with the reference once, then free it (TRL)."
    )
    threads: int = Field(2, ge=1, description="torch CPU threads of the training process.")
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision (fp32 master weights). Unset: on where bf16 is fast, a "
        "CUDA GPU that supports it or a CPU with AMX; off elsewhere, where it is emulated and slower.",
    )
    trl_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other trl.DPOConfig field, passed through (e.g. warmup_ratio).",
    )
    criterion: str | None = Field(
        None,
        description="Train on one of labeling.criteria instead of the overall choice: each pair "
        "decided by its labels' judgments on that criterion (one labeling pass, several data "
        "sets). Unset: the overall choice.",
    )

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in DPO_LOSSES:
            raise ValueError(f"{value!r} is no DPO loss of TRL's: one of {', '.join(DPO_LOSSES)}")
        return value

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_has_a_loss(cls, value: float, info) -> float:
        # TRL 1.x applies label_smoothing in these losses only; its sigmoid loss (the default,
        # which took it as cDPO before) ignores it, so the setting would change nothing.
        loss_type = info.data.get("loss_type", "sigmoid")
        if value and loss_type not in SMOOTHED_LOSSES:
            raise ValueError(
                f"does nothing with loss_type {loss_type!r}: TRL uses it only in "
                f"{', '.join(SMOOTHED_LOSSES)}. For labels flipped with probability "
                f'{value:g}, set loss_type = "robust"'
            )
        return value


class EvalSettings(Section):
    n_prompts: int = Field(100, ge=1, description="Held-out prompts per evaluation.")
    temperature: float = Field(0.7, gt=0.0)
    win_rate_threshold: float = Field(0.5, ge=0.0, le=1.0, description="The deploy gate.")
    samples_per_prompt: int = Field(1, ge=1, le=16, description="Responses per policy and prompt.")
    max_new_tokens: int | None = Field(None, ge=1, description="Unset: generation's.")
    judge: str | None = Field(
        None,
        description="Gold judge (module:callable) for evaluation. Unset: the demo task's judge "
        "when the policy is the embedded demo (policy.init_path unset), else none.",
    )
    gate: Literal["auto", "judge", "proxy", "human"] = Field(
        "auto",
        description="Which win-rate gates a deploy; auto: the judge's when there is one. human: "
        "the auto gate deploys, then the human votes confirm the deploy or roll it back "
        "(human_min_votes, human_threshold).",
    )
    seed: int = 0
    implicit_reward: bool = Field(
        True,
        description="With a judge and 2 or more of pi_0's replies per held-out prompt "
        "(implicit_reward_samples): score each candidate's DPO implicit reward against pi_0 on "
        "them, paired and ranked by the judge "
        "(accuracy and margin; training.implicit_reward).",
    )
    implicit_reward_samples: int | None = Field(
        None,
        ge=2,
        le=16,
        description="pi_0's replies per held-out prompt for the implicit reward, every two of "
        "them a pair (unset: samples_per_prompt). Drawn once per data directory and cached; each "
        "candidate is scored on them (teacher-forced, no generation): the chat demo's 6 cost "
        "about 70 s a version on 2 CPU cores, pi_0's draw about 130 s once.",
    )
    implicit_reward_min_gap: float = Field(
        0.0,
        ge=0.0,
        description="Judge points a held-out pair's two replies must differ by to count: pairs "
        "the judge barely separates are coin flips for any policy, and only add noise.",
    )
    prepare_while_labeling: bool = Field(
        True,
        description="While a round is being labeled and the scheduler has nothing queued, draw "
        "and score what the next evaluation compares its candidate with (pi_0's held-out "
        "replies and log-probabilities, the deployed policy's samples), so that the iteration "
        "after the quota does not wait for it. It runs in the scheduler's process.",
    )
    human_prompts: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Held-out prompts whose replies are queued as blind evaluation pairs after "
        "each deploy: the new version against the one it replaced and against pi_0 (0: none). "
        "At most n_prompts reuses the automatic evaluation's samples.",
    )
    human_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of each annotator's claims that go to evaluation pairs while there "
        "are some (0: only when no preference pair is left; 1: evaluation pairs first, an "
        "evaluation round).",
    )
    human_min_votes: int = Field(
        64,
        ge=1,
        description="The human gate decides once the new version and the previous one have "
        "this many votes between them (or every pair between them has its vote).",
    )
    human_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="The human gate keeps a deploy when the lower bound of the 95% interval of "
        "its human win-rate against the previous version reaches this; else it rolls back.",
    )
    bootstrap_samples: int = Field(
        1000, ge=10, le=100_000, description="Bootstrap resamples of the leaderboard's intervals."
    )


class DatabaseSettings(Section):
    """The connection pool of each process (PostgreSQL; SQLite keeps its own fixed pool)."""

    pool_size: int = Field(40, ge=1, le=1000, description="Connections kept open per process.")
    max_overflow: int = Field(
        10, ge=0, le=1000, description="Extra connections a process may open under load."
    )
    pool_timeout: float = Field(
        10.0, gt=0, description="Seconds a request waits for a free connection before failing."
    )
    connect_timeout: int = Field(
        5, ge=1, description="Seconds to wait for the server when connecting (PostgreSQL)."
    )


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    scheduler: bool = True
    workers: int = Field(
        1, ge=1, le=64, description="Server processes; the scheduler runs once, beside them."
    )
    label_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads per worker for labeling events. Each is one short write, and "
        "SQLite takes one writer at a time: more threads only contend for the lock and the GIL "
        "(with PostgreSQL, more can help).",
    )
    api_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads per worker for the JSON API's token check and labeling calls "
        "(next, label, skip), apart from the pool of 40 that serves the rest: a few "
        "transactions at once wait less for the GIL than many.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PREFLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: Path = DEFAULT_DATA_DIR
    demo: Literal["chat", "support"] | None = Field(
        None,
        description="The demo this data directory holds (written to prefloop.toml by "
        "`prefloop init --demo`); its defaults (DEMO_DEFAULTS) sit below the file's values. "
        "Unset with no policy.init_path: the support demo, as before there were two.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; unset: SQLite in the data directory."
    )
    log_level: str = "INFO"
    database: DatabaseSettings = DatabaseSettings()
    policy: PolicySettings = PolicySettings()
    generation: GenerationSettings = GenerationSettings()
    proxy: ProxySettings = ProxySettings()
    pairing: PairingSettings = PairingSettings()
    routing: RoutingSettings = RoutingSettings()
    labeling: LabelingSettings = LabelingSettings()
    loop: LoopSettings = LoopSettings()
    dpo: DPOSettings = DPOSettings()
    eval: EvalSettings = EvalSettings()
    server: ServerSettings = ServerSettings()

    @model_validator(mode="after")
    def _criterion_is_judged(self) -> Settings:
        if self.dpo.criterion is not None and self.dpo.criterion not in self.labeling.criteria:
            raise ValueError(
                f"dpo.criterion {self.dpo.criterion!r} is not among labeling.criteria "
                f"{self.labeling.criteria}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @property
    def resolved_database_url(self) -> str:
        from storage.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)

    @property
    def demo_policy_dir(self) -> Path:
        return self.data_dir / "policies" / "v0"


# The defaults each demo sets below prefloop.toml. The support demo's are the plain defaults (its
# tiny policy is what they were tuned on); the chat demo's were measured with SmolLM2-135M on a
# 2-core CPU (README, "The chat demo").
CHAT_JUDGE = "labeling.chat_task:chat_judge"
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "support": {},
    "chat": {
        "generation": {
            "n_samples": 4,
            "max_new_tokens": 160,
            "prompts_per_round": 64,
            "first_round_prompts": 16,
            # 128 rows decoding together: 256 (64 prompts) ran at 104 tokens/s, 2 x 128 at 146
            "batch_size": 32,
        },
        "proxy": {"judge": CHAT_JUDGE},
        # pi_0's 6 replies a held-out prompt, every two a pair, those a point of the judge's 10
        # apart: 342 pairs, where 2 replies a prompt gave 27 (README, "The chat demo").
        "eval": {
            "judge": CHAT_JUDGE,
            "n_prompts": 64,
            "samples_per_prompt": 2,
            "implicit_reward_samples": 6,
            "implicit_reward_min_gap": 1.0,
        },
        "dpo": {
            "learning_rate": 5e-5,
            "beta": 0.1,
            "max_length": 320,
            "num_train_epochs": 1.0,
            "per_device_train_batch_size": 8,
        },
        "loop": {"data_scope": "latest"},
    },
}


class SettingsError(ValueError):
    """Invalid settings; the message names every offending key and where it came from."""


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:  # the message ends "(at line L, column C)"
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 (byte {exc.start}): TOML files are UTF-8") from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid settings ({origin}):"]
    for error in exc.errors():
        if not error["loc"]:  # a rule across keys: its message names them
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _field_at(path: list[str]) -> FieldInfo | None:
    """The field a nested key (["generation", "temperatures"]) names, None if none does."""
    model: type[BaseModel] = Settings
    for depth, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None or depth == len(path) - 1:
            return field
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return None


def _json_hint(annotation: Any) -> str | None:
    """How a value of `annotation` is written in JSON, None if the environment gives it as is
    (pydantic-settings parses lists, tables and sections from the environment as JSON)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        hints = [_json_hint(a) for a in typing.get_args(annotation) if a is not type(None)]
        return next((h for h in hints if h), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (
            'a section is written {"key": value}, or one variable per key like PREFLOOP_DPO__BETA'
        )
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple, set, frozenset):
        return "a list is written [1.0, 0.7]"
    if origin is dict:
        return 'a table is written {"key": value}'
    return None


def _env_json_errors() -> list[str]:
    """One line per PREFLOOP_* variable whose value has to be JSON and is not."""
    prefix = Settings.model_config["env_prefix"].lower()
    delimiter = Settings.model_config["env_nested_delimiter"]
    lines = []
    for name, raw in sorted(os.environ.items()):
        if not name.lower().startswith(prefix):
            continue
        path = name[len(prefix) :].lower().split(delimiter)
        field = _field_at(path)
        hint = _json_hint(field.annotation) if field is not None else None
        if hint is None:
            continue
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            # Not the value itself: a table may hold a token (dpo.trl_args: hub_token).
            where = f"{exc.msg} at character {exc.pos + 1}"
            lines.append(f"  {name} ({'.'.join(path)}): not valid JSON ({hint}; {where})")
    return lines


def load_settings(data_dir: Path | str | None = None, **flags: Any) -> Settings:
    """Build the settings for `data_dir` (flags: CLI values as nested dicts; None means unset)."""
    data_dir = Path(data_dir or os.environ.get("PREFLOOP_DATA_DIR") or DEFAULT_DATA_DIR)
    toml_path = data_dir / SETTINGS_FILE
    file_values = _read_toml(toml_path)
    if not isinstance(file_values.get("data_dir", ""), str):
        raise SettingsError(f"{toml_path}: data_dir must be a string")
    file_values.pop("data_dir", None)  # the directory holding the file decides
    values = {k: v for k, v in flags.items() if v is not None}
    values["data_dir"] = data_dir
    demo = values.get("demo") or os.environ.get("PREFLOOP_DEMO") or file_values.get("demo")
    if demo is not None and demo not in DEMO_DEFAULTS:
        raise SettingsError(
            f"invalid settings ({toml_path}, PREFLOOP_DEMO): demo: expected one of "
            f"{sorted(DEMO_DEFAULTS)} (got {demo!r})"
        )
    if demo:
        file_values = _deep_merge(DEMO_DEFAULTS[demo], file_values)
    origin = f"{toml_path}, PREFLOOP_* environment, command-line flags"
    token = _file_values.set(file_values)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, origin)) from None
    except pydantic_settings.SettingsError as exc:  # a value it could not parse, before validation
        lines = _env_json_errors() or [f"  {exc}"]
        raise SettingsError(
            "\n".join(["invalid settings (PREFLOOP_* environment):", *lines])
        ) from None
    finally:
        _file_values.reset(token)


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Apply dotted-key overrides (`{"dpo.beta": 0.2}`), validated; raise SettingsError naming
    the key."""
    values = settings.model_dump()
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SettingsError(f"unknown setting {dotted!r}")
            node = node[part]
        if leaf not in node:
            raise SettingsError(f"unknown setting {dotted!r}")
        node[leaf] = value
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, "run-time settings")) from None


def from_snapshot(values: dict[str, Any]) -> tuple[Settings, list[str]]:
    """Settings from a snapshot prefloop stored itself (a job's `params["settings"]`, the
    `model_dump` of the settings it was queued with), and the dotted keys it dropped: a setting an
    upgrade of prefloop removed while the job waited. A user's file naming such a key is refused
    (`load_settings`); a snapshot is prefloop's own, so the job runs on."""
    dropped: list[str] = []

    def known(values: dict[str, Any], model: type[BaseModel], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            field = model.model_fields.get(key)
            if field is None:
                dropped.append(prefix + key)
                continue
            sub = field.annotation
            if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
                value = known(value, sub, f"{prefix}{key}.")
            out[key] = value
        return out

    return Settings.model_validate(known(values, Settings, "")), dropped


EDITABLE_KEYS: tuple[str, ...] = (
    "generation.n_samples",
    "generation.temperatures",
    "generation.top_p",
    "generation.max_new_tokens",
    "generation.prompts_per_round",
    "pairing.strategy",
    "routing.enabled",
    "routing.tau",
    "routing.max_uncertainty",
    "routing.audit_share",
    "routing.human_budget",
    "labeling.overlap",
    "labeling.suggestion_mode",
    "labeling.paused",
    "labeling.gold_rate",
    "labeling.min_gold_accuracy",
    "labeling.min_gold_seen",
    "labeling.gold_filter",
    "labeling.criteria",
    "labeling.too_fast_seconds",
    "loop.human_quota",
    "loop.interval_minutes",
    "loop.data_scope",
    "loop.reference",
    "loop.start",
    "dpo.beta",
    "dpo.loss_type",
    "dpo.learning_rate",
    "dpo.num_train_epochs",
    "dpo.per_device_train_batch_size",
    "dpo.label_smoothing",
    "dpo.criterion",
    "eval.win_rate_threshold",
    "eval.gate",
    "eval.human_prompts",
    "eval.human_share",
    "eval.prepare_while_labeling",
    "eval.human_min_votes",
    "eval.human_threshold",
)
"""The settings an admin may change at run time (the admin view's settings form)."""
