"""An iteration's generation step, from the deployed policy to queued pairs (generating -> labeling).

    report = generate_iteration(engine=engine, settings=settings, n_prompts=None, progress=False)

sample n responses per train prompt (the least sampled prompts first) → score them with the proxy
→ pick pairs (pairing.strategy) → route them (routing.*: proxy labels, human queue within the
iteration's budget, audits) → store responses, pairs, suggestions and proxy labels in one
transaction, and move the iteration from `generating` to `labeling`. An iteration already in
`generating` is reused (a retried job); otherwise a new one starts. If the step fails the
iteration is left `failed` with the error, and nothing of it is stored.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from labeling.generation import (
    TOO_LONG,
    ContextFit,
    Sample,
    eval_fit,
    load_sampler,
    round_fit,
    some_ids,
)
from labeling.pairing import select_pairs
from labeling.proxy import Proxy, load_proxy
from labeling.routing import route_pairs
from storage import crud, pairs
from storage.crud import PromptIn
from storage.db import transaction
from storage.models import IterationState, PairStrategy, Policy, Route, Split
from storage.policies import set_iteration_metrics
from storage.settings import Settings

log = logging.getLogger("prefloop.generate")


class GenerationError(RuntimeError):
    pass


def _open_iteration(*, engine: Engine, settings: Settings) -> tuple[int, int, int, str, int | None]:
    """(iteration id, k, policy id, policy path, parent policy id) for this iteration."""
    with transaction(engine) as session:
        policy = crud.deployed_policy(session=session)
        if policy is None:
            raise GenerationError("no deployed policy: run `prefloop init --demo` or deploy one")
        iteration = crud.current_iteration(session=session)
        if iteration is None or iteration.state != IterationState.generating:
            iteration = crud.start_iteration(
                session=session,
                policy_in_id=policy.id,
                human_quota=settings.loop.human_quota,
                human_budget=settings.routing.human_budget,
            )
        return iteration.id, iteration.k, policy.id, policy.path, policy.parent_id


def _sample_all(
    sampler,
    prompts: list,
    *,
    n: int,
    temperatures: list[float],
    seed: int,
    batch_size: int,
    bar,
) -> list[list[Sample]]:
    rows: list[list[Sample]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows.extend(sampler.sample(chunk, n=n, temperatures=temperatures, seed=seed + start))
        if bar is not None:
            bar.update(len(chunk))
    return rows


def _fitting_prompts(
    *, engine: Engine, n: int, seed: int, fit: ContextFit
) -> tuple[list[tuple[int, str, Any]], dict[str, list[int]]]:
    """Up to `n` train prompts in `storage.pairs.train_prompts`' order that the policy can
    answer (`ContextFit.why_not`), as (id, text, messages), and the ids of those passed over by
    reason (a never-sampled prompt stays first in that order, so every round meets it again)."""
    limit = n
    while True:
        with transaction(engine, readonly=True) as session:
            rows = [
                (p.id, p.text, p.messages)
                for p in pairs.train_prompts(session=session, limit=limit, seed=seed)
            ]
        fitting, passed = [], {}
        for row in rows:
            if len(fitting) == n:
                break
            reason = fit.why_not(row[2] or row[1])
            if reason is None:
                fitting.append(row)
            else:
                passed.setdefault(reason, []).append(row[0])
        if len(fitting) == n or len(rows) < limit:
            return fitting, passed
        limit = n + sum(len(ids) for ids in passed.values())


def unanswerable(
    *, engine: Engine, settings: Settings, prompts: Sequence[PromptIn]
) -> dict[str, list[int]]:
    """The indexes of `prompts` that a round (a train prompt, on the deployed policy) or an
    evaluation (an eval prompt, on pi_0) would pass over, by reason (`ContextFit.why_not`; too
    long with the limit it passes); none before a policy is registered. For an import to say.
    A policy whose directory is not on this host (a replica that serves only, without the
    scheduler's policies) is not asked."""
    with transaction(engine, readonly=True) as session:
        policies = crud.list_policies(session=session)
        deployed = crud.deployed_policy(session=session)
    if not policies:
        return {}
    fits = {
        Split.train: round_fit((deployed or policies[-1]).path, settings),
        Split.eval: eval_fit(policies[0].path, settings),
    }
    fits = {split: fit for split, fit in fits.items() if Path(fit.policy_path).is_dir()}
    found: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        fit = fits.get(prompt.split)
        if fit is None:
            continue
        reason = fit.why_not(prompt.messages or prompt.text)
        if reason is not None:
            found.setdefault(fit.explain(reason), []).append(i)
    return found


def reply_budget_error(deployed: Policy | None, settings: Settings) -> str | None:
    """Why `settings` leave the deployed policy no room for a prompt (`generation.max_new_tokens`
    as long as its context: every round would fail), or None; None too where its directory is not
    on this host. For a settings change to refuse before it is saved."""
    if deployed is None or not Path(deployed.path).is_dir():
        return None
    fit = round_fit(deployed.path, settings)
    if fit.window is None or fit.max_new_tokens < fit.window:
        return None
    return f"generation.max_new_tokens: {fit.limit()} (policy v{deployed.version})"


def unanswerable_note(found: dict[str, list[int]], places: Sequence[str], shown: int = 10) -> str:
    """`unanswerable`'s answer for the person importing, each prompt named by its place in the
    file; empty when there is nothing to say."""
    if not found:
        return ""
    parts = [
        f"{len(ixs)} {reason}: {', '.join(places[i] for i in ixs[:shown])}"
        + (f" and {len(ixs) - shown} more" if len(ixs) > shown else "")
        for reason, ixs in found.items()
    ]
    n = sum(len(ixs) for ixs in found.values())
    return (
        f"{n} of these prompts cannot be sampled by the policy, and rounds and evaluations pass "
        f"them over (they are stored all the same): {'; '.join(parts)}"
    )


def generate_iteration(
    *,
    engine: Engine,
    settings: Settings,
    n_prompts: int | None = None,
    progress: bool = False,
    proxy: Proxy | None = None,
) -> dict[str, Any]:
    """Generate an iteration's pairs into the database; returns a report (counts, routes, timing)."""
    started = time.perf_counter()
    iteration_id, k, policy_id, policy_path, parent_id = _open_iteration(
        engine=engine, settings=settings
    )
    try:
        report = _run(
            engine=engine,
            settings=settings,
            iteration_id=iteration_id,
            k=k,
            policy_id=policy_id,
            policy_path=policy_path,
            parent_id=parent_id,
            n_prompts=n_prompts or settings.generation.prompts_per_round,
            progress=progress,
            proxy=proxy,
        )
    except BaseException as exc:
        with transaction(engine) as session:
            crud.set_iteration_state(
                session=session,
                iteration_id=iteration_id,
                state=IterationState.failed,
                error=f"generation: {type(exc).__name__}: {exc}",
            )
        raise
    report["seconds"] = round(time.perf_counter() - started, 2)
    log.info("iteration %s generated: %s", k, report)
    return report


def _run(
    *,
    engine: Engine,
    settings: Settings,
    iteration_id: int,
    k: int,
    policy_id: int,
    policy_path: str,
    parent_id: int | None,
    n_prompts: int,
    progress: bool,
    proxy: Proxy | None,
) -> dict[str, Any]:
    gen, pairing = settings.generation, settings.pairing
    seed = gen.seed + 1_000 * k
    rng = random.Random(seed)
    with transaction(engine, readonly=True) as session:
        parent = crud.get_policy_by_id(session=session, policy_id=parent_id) if parent_id else None
        parent_path = parent.path if parent else None
        versions = {policy_id: crud.get_policy_by_id(session=session, policy_id=policy_id).version}
        if parent is not None:
            versions[parent.id] = parent.version
    fit = round_fit(policy_path, settings)
    prompt_rows, passed = _fitting_prompts(engine=engine, n=n_prompts, seed=seed, fit=fit)
    too_long = passed.get(TOO_LONG, [])
    n_refused = sum(len(ids) for reason, ids in passed.items() if reason != TOO_LONG)
    for reason, ids in passed.items():
        log.warning(
            "iteration %s: %d train prompts left out, %s: ids %s",
            k,
            len(ids),
            fit.explain(reason),
            some_ids(ids),
        )
    if not prompt_rows:
        if passed:
            too_long_first = sorted(passed.items(), key=lambda item: item[0] != TOO_LONG)
            reasons = [f"{len(ids)} {fit.explain(reason)}" for reason, ids in too_long_first]
            raise GenerationError(f"no active train prompt can be sampled: {'; '.join(reasons)}")
        raise GenerationError("no active train prompts: import some with `prefloop prompts import`")
    inputs = [messages or text for _, text, messages in prompt_rows]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(inputs), desc=f"iteration {k}: sampling", unit="prompt")
    sample_started = time.perf_counter()
    sampler = load_sampler(policy_path, gen, data_dir=settings.data_dir)
    policy_load = getattr(sampler, "load_report", None)  # the generation worker's (vllm)
    try:
        rows = _sample_all(
            sampler,
            inputs,
            n=gen.n_samples,
            temperatures=gen.temperatures,
            seed=seed,
            batch_size=gen.batch_size,
            bar=bar,
        )
        strategy = PairStrategy(pairing.strategy)
        enhancer_rows: list[list[Sample]] = [[] for _ in rows]
        enhancer_from = None
        if strategy == PairStrategy.explore:
            if pairing.enhancer == "previous" and parent_path:
                sampler.close()
                sampler = load_sampler(parent_path, gen, data_dir=settings.data_dir)
                enhancer_temps, enhancer_from = gen.temperatures, parent_id
            else:
                enhancer_temps = [pairing.enhancer_temperature]
            enhancer_rows = _sample_all(
                sampler,
                inputs,
                n=pairing.enhancer_samples,
                temperatures=enhancer_temps,
                seed=seed + 500,
                batch_size=gen.batch_size,
                bar=None,
            )
    finally:
        sampler.close()
        if bar is not None:
            bar.close()
    sample_seconds = time.perf_counter() - sample_started

    proxy = proxy or load_proxy(engine=engine, settings=settings)
    if not proxy.fitted and strategy != PairStrategy.explore:
        strategy = PairStrategy.random  # an unfitted proxy has no best or worst to offer
    groups = [main + extra for main, extra in zip(rows, enhancer_rows, strict=True)]
    texts = [[s.text for s in group] for group in groups]
    score_started = time.perf_counter()
    scored = proxy.score_groups([text for _, text, _ in prompt_rows], texts)
    score_seconds = time.perf_counter() - score_started

    candidates = []  # (prompt index, i, j, p, u)
    dropped_identical = 0
    for idx, (group, scores) in enumerate(zip(groups, scored, strict=True)):
        is_enhancer = [j >= len(rows[idx]) for j in range(len(group))]
        picked = select_pairs(
            strategy,
            scores,
            texts[idx],
            rng=rng,
            k=pairing.pairs_per_prompt,
            fitted=proxy.fitted,
            enhancer=is_enhancer if strategy == PairStrategy.explore else None,
            uncertainty=pairing.uncertainty,
        )
        dropped_identical += pairing.pairs_per_prompt - len(picked)
        for i, j in picked:
            candidates.append((idx, i, j, scores.p(i, j), scores.uncertainty(i, j)))

    with transaction(engine) as session:
        iteration = crud.get_iteration(session=session, iteration_id=iteration_id)
        slots = iteration.human_budget - pairs.human_routed_count(
            session=session, iteration_id=iteration_id
        )
        routes = route_pairs(
            [(p, u) for *_, p, u in candidates],
            settings.routing,
            human_slots=slots,
            rng=rng,
            proxy_fitted=proxy.fitted,
        )
        responses_in = []
        for idx, group in enumerate(groups):
            prompt_id = prompt_rows[idx][0]
            for j, sample in enumerate(group):
                from_enhancer = j >= len(rows[idx])
                made_by = (enhancer_from or policy_id) if from_enhancer else policy_id
                sampling = sample.sampling() | {
                    "policy_id": made_by,
                    "policy_version": versions[made_by],
                }
                if from_enhancer:
                    sampling["role"] = "enhancer"
                responses_in.append(
                    pairs.ResponseIn(
                        prompt_id=prompt_id,
                        text=sample.text,
                        sampling=sampling,
                        policy_id=made_by,
                        iteration_id=iteration_id,
                        proxy_reward=float(scored[idx].rewards[j]) if proxy.fitted else None,
                        proxy_version=proxy.version,
                    )
                )
        stored = pairs.add_responses(session=session, responses=responses_in)
        ids, offset = [], 0
        for group in groups:
            ids.append([r.id for r in stored[offset : offset + len(group)]])
            offset += len(group)
        pair_rows = []
        for (idx, i, j, p, u), route in zip(candidates, routes, strict=True):
            if route is None:
                continue
            rewards = scored[idx].rewards
            pair_rows.append(
                pairs.PairIn(
                    prompt_id=prompt_rows[idx][0],
                    response_a_id=ids[idx][i],
                    response_b_id=ids[idx][j],
                    strategy=strategy,
                    route=route,
                    overlap=settings.labeling.overlap,
                    iteration_id=iteration_id,
                    p_a=p if proxy.fitted else None,
                    uncertainty=u,
                    reward_a=float(rewards[i]) if proxy.fitted else None,
                    reward_b=float(rewards[j]) if proxy.fitted else None,
                    agent=proxy.agent if proxy.fitted else None,
                )
            )
        pairs.add_pairs(session=session, pairs=pair_rows)
        n_samples = sum(len(g) for g in groups)
        counts = {
            "prompts": len(prompt_rows),
            "prompts_too_long": len(too_long),
            "prompts_refused_by_template": n_refused,
            "responses": n_samples,
            "pairs": len(pair_rows),
        }
        # on the iteration, for the admin view's timeline (the job's log has the ids)
        set_iteration_metrics(
            session=session, iteration_id=iteration_id, metrics={"generation": counts}
        )
        crud.set_iteration_state(
            session=session, iteration_id=iteration_id, state=IterationState.labeling
        )

    route_counts = {r.value: sum(1 for x in routes if x == r) for r in Route}
    return {
        "iteration_k": k,
        "iteration_id": iteration_id,
        "policy_id": policy_id,
        **counts,
        "strategy": strategy.value,
        "proxy": proxy.agent,
        "routes": route_counts,
        "over_budget": sum(1 for x in routes if x is None),
        "unpaired": dropped_identical,
        "samples_per_second": round(n_samples / sample_seconds, 2) if sample_seconds else None,
        "proxy_scores_per_second": round(n_samples / score_seconds, 2) if score_seconds else None,
        **({"policy_load": policy_load} if policy_load else {}),
    }
