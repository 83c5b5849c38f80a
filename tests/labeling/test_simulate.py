"""Simulated annotators: only the difference of a judge's scores matters unless a both-bad
threshold in the judge's own units is asked for."""

from __future__ import annotations

import random

from sqlmodel import select

from labeling.simulate import simulate_labels, simulated_choice
from storage.db import transaction
from storage.models import Choice, Label
from storage.settings import load_settings
from tests.factories import make_pairs


def negative_judge(prompt: str, response: str) -> float:
    """Scores like a log-probability: always below 0, and no two replies alike."""
    return -1.0 - sum(map(ord, response))


def test_only_the_difference_of_scores_matters_by_default():
    rng = random.Random(0)
    assert simulated_choice(-7, -3, noise=0, rng=rng) == "right"
    assert simulated_choice(-300.5, -301.0, noise=0, rng=rng) == "left"
    assert simulated_choice(-2, -2, noise=1, rng=rng) == "tie"
    assert simulated_choice(-7, -3, noise=0, rng=rng, both_bad_below=-2) == "both_bad"
    assert simulated_choice(-7, -3, noise=0, rng=rng, both_bad_below=-5) == "right"


def _labels(engine) -> list[Choice]:
    with transaction(engine, readonly=True) as session:
        return [label.choice for label in session.exec(select(Label).order_by(Label.pair_id))]


def test_a_judge_with_negative_scores_gets_a_or_b_labels(engine, tmp_path):
    with transaction(engine) as session:
        make_pairs(session, 6)
    settings = load_settings(tmp_path)
    n = simulate_labels(
        engine=engine, settings=settings, annotators=2, noise=0, judge=negative_judge
    )
    choices = _labels(engine)
    assert n == 6 and len(choices) == 6
    assert set(choices) <= {Choice.a, Choice.b}


def test_both_bad_below_a_threshold_in_the_judges_units(engine, tmp_path):
    with transaction(engine) as session:
        make_pairs(session, 4)
    settings = load_settings(tmp_path)
    simulate_labels(
        engine=engine,
        settings=settings,
        annotators=1,
        noise=0,
        judge=negative_judge,
        both_bad_below=0.0,
    )
    assert _labels(engine) == [Choice.both_bad] * 4


def test_a_careless_annotator_answers_at_random_and_gold_pairs_catch_it(engine, tmp_path):
    """Three annotators with a judge that is always right (noise 0); sim-3 answers at random on
    every pair (careless 1.0). Gold pairs come at gold_rate 1 (a qualification round): the two
    careful ones get every one right, sim-3 about a quarter, and only sim-3 is flagged."""
    from storage import gold
    from storage.crud import PromptIn
    from storage.gold import GoldIn, GoldRule

    with transaction(engine) as session:
        make_pairs(session, 30)
        gold.add_gold_pairs(
            session=session,
            items=[GoldIn(PromptIn(f"gold {i}"), "good reply", "bad", Choice.a) for i in range(12)],
        )
    settings = load_settings(tmp_path)
    settings.labeling.gold_rate = 1.0

    def length_judge(prompt: str, response: str) -> float:
        return float(len(response))

    with_random = simulate_labels(
        engine=engine,
        settings=settings,
        annotators=3,
        noise=0,
        judge=length_judge,
        max_labels=36,
        careless={3: 1.0},
        seed=1,
    )
    assert with_random == 36
    with transaction(engine, readonly=True) as session:
        standing = {s.name: s for s in gold.gold_standing(session=session, rule=GoldRule(0.8, 10))}
    assert {name: s.seen for name, s in standing.items()} == {"sim-1": 12, "sim-2": 12, "sim-3": 12}
    assert standing["sim-1"].correct == standing["sim-2"].correct == 12
    assert standing["sim-3"].correct <= 6  # 12 coin flips over four answers: about 3
    assert [name for name, s in standing.items() if s.flagged] == ["sim-3"]


def test_careless_names_an_annotator_that_exists(engine, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no annotator sim-4"):
        simulate_labels(
            engine=engine, settings=load_settings(tmp_path), annotators=3, careless={4: 0.5}
        )
