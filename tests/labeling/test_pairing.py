"""Each pairing strategy keeps its contract."""

from __future__ import annotations

import random

import numpy as np
import pytest

from labeling.pairing import select_pairs
from labeling.proxy import GroupScores

TEXTS = ["r0", "r1", "r2", "r3", "r4", "r5"]


def scores(rewards, members=None, bonus=None):
    return GroupScores(rewards=np.array(rewards, dtype=float), members=members, bonus=bonus)


def test_max_min_pairs_best_with_worst_then_the_next():
    s = scores([0.1, 2.0, -1.0, 0.5, 1.5, -0.5])
    rng = random.Random(0)
    assert select_pairs("max_min", s, TEXTS, rng=rng) == [(1, 2)]
    assert select_pairs("max_min", s, TEXTS, rng=rng, k=2) == [(1, 2), (4, 5)]


def test_identical_texts_and_exact_ties_are_never_paired():
    s = scores([3.0, 1.0, 1.0, 3.0])
    texts = ["same", "x", "y", "same "]
    rng = random.Random(0)
    [(i, j)] = select_pairs("max_min", s, texts, rng=rng)
    assert i in (0, 3) and j in (1, 2)  # never "same" against "same "
    # all equal rewards: nothing to pair with a fitted proxy, anything distinct without one
    flat = scores([0.0, 0.0, 0.0])
    assert select_pairs("max_min", flat, ["a", "b", "c"], rng=rng) == []
    assert select_pairs("random", flat, ["a", "b", "c"], rng=rng, fitted=False) != []
    assert select_pairs("random", scores([0, 0]), ["a", "a"], rng=rng, fitted=False) == []


def test_max_random_keeps_the_best():
    s = scores([0.1, 2.0, -1.0, 0.5, 1.5, -0.5])
    seen = set()
    for seed in range(30):
        [(i, j)] = select_pairs("max_random", s, TEXTS, rng=random.Random(seed))
        assert i == 1 and j != 1
        seen.add(j)
    assert len(seen) >= 4


def test_random_pairs_are_spread_and_ordered_by_reward():
    s = scores([0.1, 2.0, -1.0, 0.5, 1.5, -0.5])
    seen = set()
    for seed in range(60):
        [(i, j)] = select_pairs("random", s, TEXTS, rng=random.Random(seed))
        assert s.rewards[i] >= s.rewards[j]
        seen.add((i, j))
    assert len(seen) >= 8


def test_uncertain_picks_the_pair_the_ensemble_disagrees_on():
    # heads agree on everything except 2 vs 4
    members = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 6, 3, 0, 5], [0, 1, 2, 3, 4, 5]], dtype=float)
    s = scores(members.mean(axis=0), members=members)
    [(i, j)] = select_pairs("uncertain", s, TEXTS, rng=random.Random(0))
    assert {i, j} == {2, 4}
    # the covariance norm, when asked for
    bonus = np.zeros((6, 6))
    bonus[0, 5] = bonus[5, 0] = 9.0
    s = scores(members.mean(axis=0), members=members, bonus=bonus)
    [(i, j)] = select_pairs("uncertain", s, TEXTS, rng=random.Random(0), uncertainty="covariance")
    assert {i, j} == {0, 5}
    # no ensemble: P closest to one half
    [(i, j)] = select_pairs(
        "uncertain", scores([0, 5, 2.05, 9, 2.0, -3]), TEXTS, rng=random.Random(0)
    )
    assert {i, j} == {2, 4}


def test_explore_pairs_the_main_policys_best_with_an_enhancer_sample():
    enhancer = [False, False, False, True, True, True]
    members = np.array([[3, 1, 0, 1, 2, 0], [3, 1, 0, 1, 9, 0]], dtype=float)
    s = scores(members.mean(axis=0), members=members)
    [(i, j)] = select_pairs("explore", s, TEXTS, rng=random.Random(0), enhancer=enhancer)
    assert (i, j) == (0, 4)  # main's best; the enhancer sample the heads disagree on
    with pytest.raises(ValueError, match="enhancer"):
        select_pairs("explore", s, TEXTS, rng=random.Random(0))


def test_unknown_strategy_raises():
    with pytest.raises(ValueError):
        select_pairs("best_of_three", scores([1, 2]), ["a", "b"], rng=random.Random(0))
