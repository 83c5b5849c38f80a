"""Hybrid labeling: which pairs the proxy labels alone, and which go to people.

With routing off, every pair goes to humans. With it on, a pair is *confident* when
|P − 0.5| ≥ τ and its uncertainty ≤ u; confident pairs are labeled by the proxy, except a random
`audit_share` of them that humans label too (so the proxy's accuracy keeps being measured). Humans
get at most `human_slots` pairs this iteration: audits first, then the pairs the proxy is least sure
of; a pair that fits neither is dropped (route None) and never stored.

Before the iteration trains, the proxy is refit on the human labels it now has (this iteration's
included), and `recheck_proxy_labels` asks that new version about every pair the old one labeled
alone: a label it no longer backs with confidence, the same way round, is withdrawn (the pair is
discarded: kept, but read by no training data or export).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from storage import pairs
from storage.db import transaction
from storage.models import Choice, Route, Suggestion
from storage.settings import RoutingSettings, Settings


def is_confident(p: float, uncertainty: float, settings: RoutingSettings) -> bool:
    return abs(p - 0.5) >= settings.tau and uncertainty <= settings.max_uncertainty


def route_pairs(
    suggestions: Sequence[tuple[float, float]],
    settings: RoutingSettings,
    *,
    human_slots: int,
    rng: random.Random,
    proxy_fitted: bool = True,
) -> list[Route | None]:
    """A route per (P(a ≻ b), uncertainty): human, audit, proxy, or None (over the budget)."""
    routes: list[Route | None] = [None] * len(suggestions)
    slots = max(0, human_slots)
    if not settings.enabled or not proxy_fitted:
        # the order given is the order of priority
        for idx in range(min(slots, len(suggestions))):
            routes[idx] = Route.human
        return routes

    confident = [idx for idx, (p, u) in enumerate(suggestions) if is_confident(p, u, settings)]
    confident_set = set(confident)
    unsure = sorted(
        (idx for idx in range(len(suggestions)) if idx not in confident_set),
        key=lambda idx: abs(suggestions[idx][0] - 0.5),  # least sure first
    )
    # stochastic rounding: the audit share holds on average even over small rounds
    expected = settings.audit_share * len(confident)
    n_audit = int(expected) + (rng.random() < expected - int(expected))
    audits = set(rng.sample(confident, n_audit))
    for idx in confident:
        if idx in audits and slots > 0:
            routes[idx] = Route.audit
            slots -= 1
        else:
            routes[idx] = Route.proxy
    for idx in unsure:
        if slots == 0:
            break
        routes[idx] = Route.human
        slots -= 1
    return routes


def recheck_proxy_labels(*, engine, settings: Settings, iteration_id: int) -> dict[str, int]:
    """Withdraw the proxy's labels of this iteration that the latest proxy version no longer
    backs: confident (`is_confident`) on the same side. Its opinion is stored as each pair's
    newest suggestion. Returns {"rechecked": n, "withdrawn": m}."""
    from labeling.proxy import load_proxy

    with transaction(engine, readonly=True) as session:
        labeled = pairs.proxy_labeled(session=session, iteration_id=iteration_id)
    proxy = load_proxy(settings=settings, engine=engine)
    if not labeled or not proxy.fitted:
        return {"rechecked": 0, "withdrawn": 0}
    scored = proxy.score_groups(
        [row.prompt for row in labeled], [[row.a, row.b] for row in labeled]
    )
    withdrawn, suggestions = [], []
    for row, scores in zip(labeled, scored, strict=True):
        p_a, uncertainty = scores.p(0, 1), scores.uncertainty(0, 1)
        same_side = (p_a >= 0.5) == (row.choice == Choice.a)
        if not (same_side and is_confident(p_a, uncertainty, settings.routing)):
            withdrawn.append(row.pair_id)
        suggestions.append(
            Suggestion(pair_id=row.pair_id, p_a=p_a, uncertainty=uncertainty, agent=proxy.agent)
        )
    with transaction(engine) as session:
        pairs.add_suggestions(session=session, suggestions=suggestions)
        pairs.withdraw_pairs(session=session, pair_ids=withdrawn)
    return {"rechecked": len(labeled), "withdrawn": len(withdrawn)}
