"""Held-out evaluation: a policy against others, head to head on the eval-split prompts.

Each policy answers the same held-out prompts (`eval.n_prompts`, `eval.samples_per_prompt` each,
at `eval.temperature`, fixed seed); a judge scores every answer, and the win-rate of A over B is
the share of (prompt, sample) slots where A's answer scores higher, ties counting half. Two judges:
the gold judge when the task has one (the demo's scoring rule, or `eval.judge`), and the current
proxy. Samples are cached per policy version under `<data_dir>/eval/`, so pi_0 and the deployed
policy are sampled once, not once per iteration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
from collections.abc import Callable, Sequence
from typing import Any

from storage import crud, evaluation
from storage.db import transaction
from storage.files import write_atomic
from storage.models import Policy
from storage.policies import set_policy_metrics
from storage.settings import Settings

log = logging.getLogger("prefloop.evaluate")

Judge = Callable[[str, str], float]  # (prompt, response) -> score
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]  # batched (prompts, responses)


def held_out_prompts(*, engine, settings: Settings, n: int) -> list[tuple[int, str]]:
    """(id, text) of the first `n` active held-out prompts, in id order, that leave pi_0 room
    for an evaluation reply (`labeling.generation.ContextFit`; every version shares pi_0's
    tokenizer and context): the same set every iteration."""
    from labeling.generation import TOO_LONG, eval_fit, some_ids

    with transaction(engine, readonly=True) as session:
        rows = evaluation.eval_prompts(session=session, limit=None)
        policies = crud.list_policies(session=session)
    if not policies:
        return rows[:n]
    fit = eval_fit(policies[0].path, settings)
    kept, too_long = [], []
    for row in rows:
        if len(kept) == n:
            break
        (kept if fit.fits(row[1]) else too_long).append(row)
    if too_long and not kept:
        raise ValueError(
            f"every active held-out prompt ({len(too_long)}) is too long for the policy: "
            f"{fit.limit()}"
        )
    if too_long:
        log.warning(
            "%d held-out prompts left out, %s: ids %s",
            len(too_long),
            fit.explain(TOO_LONG),
            some_ids([pid for pid, _ in too_long]),
        )
    return kept


def eval_prompts(*, engine, settings: Settings, n: int) -> list[str]:
    """The texts of `held_out_prompts`."""
    return [text for _, text in held_out_prompts(engine=engine, settings=settings, n=n)]


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> dict[str, Any]:
    """A's win-rate over B slot by slot (ties count half), with the counts."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(
            f"win_rate needs two equal, non-empty lists ({len(scores_a)}, {len(scores_b)})"
        )
    wins = sum(a > b for a, b in zip(scores_a, scores_b, strict=True))
    ties = sum(a == b for a, b in zip(scores_a, scores_b, strict=True))
    n = len(scores_a)
    return {
        "win_rate": round((wins + 0.5 * ties) / n, 4),
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
        "n": n,
    }


def gold_judge(settings: Settings) -> Judge | None:
    """`eval.judge`, or the demo task's judge when the policy is the embedded demo."""
    from labeling.judges import DEFAULT_JUDGE, load_judge

    spec = settings.eval.judge
    if spec is None and settings.policy.init_path is None:
        spec = DEFAULT_JUDGE
    return load_judge(spec) if spec else None


def cached_samples(
    *, settings: Settings, policy: Policy, prompts: Sequence[str], seed: int, n: int | None = None
) -> list[list[str]]:
    """`sample` for `policy`, `n` replies per prompt (default `eval.samples_per_prompt`), cached
    on disk by version, path, prompts and sampling parameters. A cached draw of more replies per
    prompt serves a smaller `n` with the first `n` of each (the fewest that suffice, so a data
    directory's answer never changes once drawn): pi_0's held-out replies for the implicit
    reward are drawn first and also give its win-rate samples."""
    from labeling.generation import eval_max_new_tokens

    ev = settings.eval
    n = ev.samples_per_prompt if n is None else n
    max_new = eval_max_new_tokens(settings)
    params = {
        "prompts": list(prompts),
        "temperature": ev.temperature,
        "max_new_tokens": max_new,
        "seed": seed,
        "path": policy.path,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = settings.data_dir / "eval"
    drawn = {
        int(p.stem.rsplit("-n", 1)[1]): p for p in folder.glob(f"v{policy.version}-{key}-n*.json")
    }
    if enough := [have for have in drawn if have >= n]:
        return [replies[:n] for replies in json.loads(drawn[min(enough)].read_text())]
    path = folder / f"v{policy.version}-{key}-n{n}.json"
    from labeling.generation import generate

    responses = generate(
        policy.path,
        list(prompts),
        temperature=ev.temperature,
        n=n,
        seed=seed,
        max_new_tokens=max_new,
        settings=settings.generation,
        data_dir=settings.data_dir,
    )
    write_atomic(path, json.dumps(responses))  # the scheduler and a training job may both write
    return responses


def score(
    prompts: Sequence[str], responses: list[list[str]], *, judge: Judge | None, proxy: Scorer | None
) -> dict[str, list[float]]:
    """Flat per-slot scores by each judge there is: {"gold": [...], "proxy": [...]}."""
    flat_prompts = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat = [r for rs in responses for r in rs]
    scores: dict[str, list[float]] = {}
    if judge is not None:
        scores["gold"] = [float(judge(p, r)) for p, r in zip(flat_prompts, flat, strict=True)]
    if proxy is not None:
        scores["proxy"] = [float(s) for s in proxy(flat_prompts, flat)]
    return scores


def proxy_scorer(*, engine, settings: Settings) -> Scorer | None:
    """The latest fitted proxy as a batched reward scorer; None before the first fit."""
    from labeling.proxy import load_proxy

    proxy = load_proxy(engine=engine, settings=settings)
    if not proxy.fitted:
        return None

    def rewards(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        groups = proxy.score_groups(prompts, [[r] for r in responses])
        return [float(g.rewards[0]) for g in groups]

    return rewards


def head_to_head(
    *,
    engine,
    settings: Settings,
    a_version: int,
    b_versions: Sequence[int],
    judge: Judge | None = None,
    proxy: Scorer | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Policy `a_version` against each of `b_versions` on the held-out prompts.

    Returns {"n_prompts", "mean": {judge: A's mean score}, "vs": {"v<b>": {judge: win_rate(...)}}}.
    """
    seed = settings.eval.seed if seed is None else seed
    prompts = eval_prompts(engine=engine, settings=settings, n=settings.eval.n_prompts)
    if not prompts:
        raise RuntimeError("no held-out prompts (split 'eval') to evaluate on")
    with transaction(engine, readonly=True) as session:
        a = crud.get_policy(session=session, version=a_version)
        others = [crud.get_policy(session=session, version=v) for v in b_versions]
    a_scores = score(
        prompts,
        cached_samples(settings=settings, policy=a, prompts=prompts, seed=seed),
        judge=judge,
        proxy=proxy,
    )
    result: dict[str, Any] = {
        "n_prompts": len(prompts),
        "mean": {name: round(statistics.fmean(s), 4) for name, s in a_scores.items()},
        "vs": {},
    }
    for other in others:
        # The same seed for every policy: a policy against itself scores exactly 0.5.
        b_scores = score(
            prompts,
            cached_samples(settings=settings, policy=other, prompts=prompts, seed=seed),
            judge=judge,
            proxy=proxy,
        )
        result["vs"][f"v{other.version}"] = {
            name: win_rate(a_scores[name], b_scores[name]) for name in a_scores
        }
    return result


def compare(
    *,
    settings: Settings,
    a: Policy,
    b: Policy,
    prompts: Sequence[str],
    judge: Judge,
    seed: int | None = None,
) -> dict[str, Any]:
    """Two policies head to head by `judge`, which may come from different databases (the
    rows only need a version and a path)."""
    seed = settings.eval.seed if seed is None else seed
    a_scores, b_scores = (
        score(
            prompts,
            cached_samples(settings=settings, policy=p, prompts=prompts, seed=seed),
            judge=judge,
            proxy=None,
        )["gold"]
        for p in (a, b)
    )
    return {
        **win_rate(a_scores, b_scores),
        "mean_a": round(statistics.fmean(a_scores), 4),
        "mean_b": round(statistics.fmean(b_scores), 4),
    }


def evaluate_candidate(
    *,
    engine,
    settings: Settings,
    candidate_version: int,
    against: Sequence[int] | None = None,
    proxy: Scorer | None | bool = True,
) -> dict[str, Any]:
    """The candidate against the deployed policy (and pi_0): stored as `metrics["eval"]` on the
    candidate's Policy row and returned. `against` defaults to [deployed, first version]."""
    with transaction(engine, readonly=True) as session:
        deployed = crud.deployed_policy(session=session)
        first = crud.list_policies(session=session)[0]
    if against is None:
        against = [
            v for v in dict.fromkeys([deployed.version if deployed else None, first.version])
        ]
    against = [v for v in against if v is not None and v != candidate_version]
    if proxy is True:
        proxy = proxy_scorer(engine=engine, settings=settings)
    judge = gold_judge(settings)
    wants_heldout = scores_implicit_reward(settings, judge) and candidate_version != first.version
    # before the win-rate: pi_0's draw for it also serves pi_0's win-rate samples (cached_samples)
    heldout = (
        heldout_implicit_reward(
            engine=engine, settings=settings, version=candidate_version, first=first, judge=judge
        )
        if wants_heldout
        else None
    )
    result = head_to_head(
        engine=engine,
        settings=settings,
        a_version=candidate_version,
        b_versions=against,
        judge=judge,
        proxy=proxy or None,
    )
    result["deployed_version"] = deployed.version if deployed else None
    if wants_heldout:
        result["implicit_reward"] = heldout
    with transaction(engine) as session:
        set_policy_metrics(session=session, version=candidate_version, metrics={"eval": result})
    return result


def scores_implicit_reward(settings: Settings, judge: Judge | None) -> bool:
    """Whether evaluations score the held-out implicit reward: a judge to rank pi_0's replies,
    `eval.implicit_reward` on, and two or more replies a prompt to pair."""
    return (
        judge is not None
        and settings.eval.implicit_reward
        and implicit_reward_samples(settings) > 1
    )


def implicit_reward_samples(settings: Settings) -> int:
    """pi_0's replies per held-out prompt for the implicit reward."""
    return settings.eval.implicit_reward_samples or settings.eval.samples_per_prompt


def heldout_implicit_reward(
    *, engine, settings: Settings, version: int, first: Policy, judge: Judge
) -> dict[str, Any] | None:
    """Policy `version`'s DPO implicit reward against pi_0 (`first`) on pi_0's held-out replies,
    every two of a prompt's, ranked by `judge` (training.implicit_reward; pairs it separates by
    less than `eval.implicit_reward_min_gap` left out); None when no pair is left.
    pi_0's log-probabilities are cached beside its samples."""
    from training.implicit_reward import implicit_reward, policy_logprobs

    reference = _reference_logprobs(engine=engine, settings=settings, first=first, judge=judge)
    if reference is None:
        return None
    triples, reference = reference
    with transaction(engine, readonly=True) as session:
        policy = crud.get_policy(session=session, version=version)
    logps = policy_logprobs(policy.path, triples, max_length=settings.dpo.max_length)
    return {
        **implicit_reward(logps, reference, beta=settings.dpo.beta),
        "reference_version": first.version,
    }


def _reference_logprobs(
    *, engine, settings: Settings, first: Policy, judge: Judge
) -> tuple[list, list[float]] | None:
    """The held-out pairs of pi_0's replies (drawn once, cached) and pi_0's log-probabilities of
    them (scored once, cached beside the replies); None when the judge leaves no pair."""
    from training.implicit_reward import judged_pairs, policy_logprobs

    prompts = eval_prompts(engine=engine, settings=settings, n=settings.eval.n_prompts)
    replies = cached_samples(
        settings=settings,
        policy=first,
        prompts=prompts,
        seed=settings.eval.seed,
        n=implicit_reward_samples(settings),
    )
    triples = judged_pairs(prompts, replies, judge, min_gap=settings.eval.implicit_reward_min_gap)
    if not triples:
        return None
    scoring = {"max_length": settings.dpo.max_length}  # what DPO sees of a pair
    key = hashlib.sha256(
        json.dumps({"pairs": triples, "path": first.path, **scoring}).encode()
    ).hexdigest()[:16]
    path = settings.data_dir / "eval" / f"v{first.version}-logps-{key}.json"
    if path.exists():
        return triples, json.loads(path.read_text())
    reference = policy_logprobs(first.path, triples, **scoring)
    write_atomic(path, json.dumps(reference))
    return triples, reference


_prepare_lock = threading.Lock()
_prepared: set[str] = set()  # what this process prepared already: a check of it costs no judging


def prepare_baselines(*, engine, settings: Settings) -> list[str]:
    """Draw and score now what the next candidate's evaluation compares it with, so that the
    evaluation after training finds it cached: pi_0's held-out replies and their
    log-probabilities (the implicit reward's reference), and the win-rate samples of pi_0 and of
    the deployed policy. The scheduler runs this while a round is being labeled
    (`eval.prepare_while_labeling`), which takes pi_0's draw out of the first iteration's
    turnaround. Returns the cache files it wrote (none when all was there); concurrent calls
    wait for each other, so nothing is drawn twice."""
    with _prepare_lock:
        with transaction(engine, readonly=True) as session:
            policies = crud.list_policies(session=session)
            deployed = crud.deployed_policy(session=session)
        if not policies:
            return []
        first = policies[0]
        versions = {p.version: p for p in (first, deployed) if p is not None}
        key = json.dumps(
            [
                str(settings.data_dir),
                [(p.version, p.path) for p in versions.values()],
                settings.eval.model_dump(mode="json"),
                settings.dpo.max_length,
            ],
            sort_keys=True,
        )
        if key in _prepared:
            return []
        prompts = eval_prompts(engine=engine, settings=settings, n=settings.eval.n_prompts)
        if not prompts:
            return []
        folder = settings.data_dir / "eval"
        before = set(folder.glob("*.json"))
        judge = gold_judge(settings)
        if scores_implicit_reward(settings, judge):
            _reference_logprobs(engine=engine, settings=settings, first=first, judge=judge)
        for policy in versions.values():
            cached_samples(
                settings=settings, policy=policy, prompts=prompts, seed=settings.eval.seed
            )
        _prepared.add(key)
        return sorted(p.name for p in set(folder.glob("*.json")) - before)
