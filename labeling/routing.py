"""Hybrid labeling: which pairs the proxy labels alone, and which go to people.

With routing off, every pair goes to humans. With it on, a pair is *confident* when
|P − 0.5| ≥ τ and its uncertainty ≤ u; confident pairs are labeled by the proxy, except a random
`audit_share` of them that humans label too (so the proxy's accuracy keeps being measured). Humans
get at most `human_slots` pairs this iteration: audits first, then the pairs the proxy is least sure
of; a pair that fits neither is dropped (route None) and never stored.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from storage.models import Route
from storage.settings import RoutingSettings


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
