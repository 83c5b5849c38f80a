"""Routing respects τ, the uncertainty cap, the human budget and the audit share."""

from __future__ import annotations

import random

from labeling.routing import route_pairs
from storage.models import Route
from storage.settings import RoutingSettings

ON = RoutingSettings(enabled=True, tau=0.3, max_uncertainty=0.1, audit_share=0.0, human_budget=100)


def test_off_sends_everything_to_humans_within_the_budget():
    off = ON.model_copy(update={"enabled": False})
    routes = route_pairs([(0.99, 0.0)] * 5, off, human_slots=3, rng=random.Random(0))
    assert routes == [Route.human] * 3 + [None] * 2


def test_confident_pairs_go_to_the_proxy():
    suggestions = [
        (0.95, 0.05),  # confident
        (0.05, 0.10),  # confident (P(b) high), u at the cap
        (0.79, 0.01),  # |P - 0.5| = 0.29 < tau
        (0.90, 0.11),  # too uncertain
        (0.80, 0.00),  # exactly tau
    ]
    routes = route_pairs(suggestions, ON, human_slots=10, rng=random.Random(0))
    assert routes == [Route.proxy, Route.proxy, Route.human, Route.human, Route.proxy]


def test_human_budget_goes_to_the_least_sure_pairs():
    suggestions = [(0.75, 0.0), (0.52, 0.0), (0.6, 0.0), (0.99, 0.0)]
    routes = route_pairs(suggestions, ON, human_slots=2, rng=random.Random(0))
    assert routes == [None, Route.human, Route.human, Route.proxy]
    assert route_pairs(suggestions, ON, human_slots=0, rng=random.Random(0)) == [
        None,
        None,
        None,
        Route.proxy,
    ]


def test_audit_share_of_confident_pairs_goes_to_humans():
    settings = ON.model_copy(update={"audit_share": 0.2})
    suggestions = [(0.99, 0.0)] * 1000 + [(0.5, 0.0)] * 10
    routes = route_pairs(suggestions, settings, human_slots=10_000, rng=random.Random(0))
    assert routes.count(Route.audit) == 200
    assert routes.count(Route.proxy) == 800
    assert routes[1000:] == [Route.human] * 10
    # audits go first within the budget; unsure pairs get what is left
    routes = route_pairs(suggestions, settings, human_slots=205, rng=random.Random(0))
    assert (routes.count(Route.audit), routes.count(Route.human)) == (200, 5)
    # small rounds keep the share on average
    audits = sum(
        route_pairs([(0.99, 0.0)] * 3, settings, human_slots=10, rng=random.Random(s)).count(
            Route.audit
        )
        for s in range(2000)
    )
    assert abs(audits / 6000 - 0.2) < 0.02


def test_an_unfitted_proxy_labels_nothing():
    routes = route_pairs(
        [(0.99, 0.0)] * 3, ON, human_slots=2, rng=random.Random(0), proxy_fitted=False
    )
    assert routes == [Route.human, Route.human, None]
