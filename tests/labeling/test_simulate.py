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
