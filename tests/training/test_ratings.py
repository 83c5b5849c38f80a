"""The Bradley–Terry fit and its bootstrap (training/ratings.py), on synthetic votes from known
ratings: it recovers them, ties count half, the batched fit is the per-resample fit, and it agrees
with a plain optimizer on the penalized likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import ratings


def synthetic_votes(true_theta, n_votes: int, seed: int) -> list[tuple[int, int, str, int]]:
    """`n_votes` votes between random pairs of versions 0..K-1, drawn from Bradley–Terry with
    `true_theta` (no ties), as (version a, version b, choice, n) counts."""
    rng = np.random.default_rng(seed)
    k = len(true_theta)
    a = rng.integers(0, k, n_votes)
    b = (a + rng.integers(1, k, n_votes)) % k
    p = 1.0 / (1.0 + np.exp(-(np.asarray(true_theta)[a] - np.asarray(true_theta)[b])))
    a_won = rng.random(n_votes) < p
    counts: dict[tuple[int, int, str], int] = {}
    for x, y, won in zip(a.tolist(), b.tolist(), a_won.tolist(), strict=True):
        key = (x, y, "a" if won else "b")
        counts[key] = counts.get(key, 0) + 1
    return [(x, y, choice, n) for (x, y, choice), n in sorted(counts.items())]


def elo(theta: float) -> float:
    return ratings.ANCHOR_RATING + ratings.ELO_SCALE * theta


def test_fit_recovers_known_ratings_and_the_intervals_cover_them():
    true = np.linspace(0.0, 3.0, 10)  # 58 rating points apart
    board = ratings.leaderboard(synthetic_votes(true, 5000, seed=1), resamples=1000, seed=0)
    assert board.votes == 5000 and board.anchor == 0
    by_version = {r.version: r for r in board.ratings}
    errors = [abs(by_version[v].rating - elo(true[v])) for v in range(10)]
    assert max(errors) < 30, errors  # the bootstrap's intervals are about ±35 points
    covered = [by_version[v].lower <= elo(true[v]) <= by_version[v].upper for v in range(10)]
    assert sum(covered) >= 9, covered
    assert [r.version for r in board.ratings] == list(range(9, -1, -1))  # best first
    assert by_version[0].rating == by_version[0].lower == by_version[0].upper == 1000.0
    assert all(r.upper - r.lower < 100 for r in board.ratings[:-1])
    assert sum(r.votes for r in board.ratings) == 2 * 5000
    assert len(board.head_to_head) == 45 and sum(h.votes for h in board.head_to_head) == 5000


def test_ties_and_both_bad_count_as_half_a_win_each_way():
    # 10 wins and 10 ties is 15 wins in 20: odds 3, log(3) apart
    board = ratings.leaderboard([(0, 1, "b", 10), (0, 1, "tie", 6), (1, 0, "both_bad", 4)])
    by_version = {r.version: r for r in board.ratings}
    expected = ratings.ELO_SCALE * math.log(3.0)
    assert by_version[1].rating - by_version[0].rating == pytest.approx(expected, abs=1.0)
    h = board.head_to_head_of(1, 0)
    assert (h.votes, h.a_wins, h.b_wins, h.ties, h.win_rate) == (20, 10, 0, 10, 0.75)
    assert board.head_to_head_of(0, 1).win_rate == 0.25
    assert by_version[1].win_rate_vs_anchor == 0.75 and by_version[1].votes_vs_anchor == 20
    even = ratings.leaderboard([(0, 1, "tie", 7), (1, 0, "a", 3), (0, 1, "a", 3)])
    assert {r.rating for r in even.ratings} == {1000.0}


def test_a_version_that_won_every_vote_gets_a_finite_rating_above_the_rest():
    board = ratings.leaderboard([(2, 0, "a", 12), (0, 1, "a", 8), (0, 1, "b", 4)])
    by_version = {r.version: r for r in board.ratings}
    assert math.isfinite(by_version[2].rating) and math.isfinite(by_version[2].upper)
    assert by_version[2].rating > by_version[0].rating > by_version[1].rating
    assert [r.version for r in board.ratings] == [2, 0, 1]


def test_the_anchor_is_pi_0_when_it_has_votes_else_the_lowest_version():
    votes = [(1, 2, "a", 5), (2, 1, "a", 3), (0, 2, "b", 4), (0, 2, "a", 2)]
    assert ratings.leaderboard(votes).anchor == 0
    assert ratings.leaderboard(votes[:2]).anchor == 1
    assert ratings.leaderboard(votes, anchor=2).anchor == 2
    assert {r.version: r.rating for r in ratings.leaderboard(votes, anchor=2).ratings}[2] == 1000
    empty = ratings.leaderboard([])
    assert (empty.ratings, empty.anchor, empty.votes) == ([], None, 0)


def test_the_batched_fit_is_each_resample_fitted_on_its_own():
    data = ratings.PairCounts.from_votes(synthetic_votes(np.linspace(0, 2, 6), 600, seed=3))
    boot = ratings.bootstrap_counts(data.counts, 20, np.random.default_rng(5))
    assert boot.shape == (20, len(data.i), 3) and (boot.sum(axis=(1, 2)) == 600).all()
    wins, games = ratings.wins_and_games(boot)
    batched = ratings.fit_theta(wins, games, data.i, data.j, 6)
    one_by_one = np.vstack(
        [ratings.fit_theta(wins[b], games[b], data.i, data.j, 6) for b in range(20)]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-10)
    assert np.ptp(batched[:, 5]) > 0.1  # the resamples differ


def test_the_fit_is_the_maximum_of_the_penalized_likelihood():
    """Against scipy's L-BFGS on the same objective, one vote at a time."""
    from scipy.optimize import minimize

    votes = synthetic_votes([0.0, 0.5, -0.4, 1.2], 300, seed=4)
    votes += [(1, 3, "tie", 7), (2, 0, "both_bad", 3)]
    data = ratings.PairCounts.from_votes(votes)
    wins, games = ratings.wins_and_games(data.counts)
    theta = ratings.fit_theta(wins, games, data.i, data.j, 4)[0]

    def objective(free):
        t = np.concatenate([[0.0], free])
        d = t[data.i] - t[data.j]
        loglik = wins * -np.logaddexp(0, -d) + (games - wins) * -np.logaddexp(0, d)
        return -(loglik.sum() - ratings.PRIOR / 2 * (free**2).sum())

    best = minimize(objective, np.zeros(3), method="L-BFGS-B", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(theta[1:], best, atol=1e-5)


def test_the_leaderboard_is_the_same_for_the_same_seed():
    votes = synthetic_votes([0.0, 0.3, 0.6], 200, seed=7)
    assert ratings.leaderboard(votes, seed=3) == ratings.leaderboard(votes, seed=3)
    assert ratings.leaderboard(votes, seed=3) != ratings.leaderboard(votes, seed=4)


def test_a_head_to_head_of_a_few_one_sided_votes_keeps_a_wide_interval():
    """Every resample of 3 wins is 3 wins: the bootstrap alone would say [1, 1]. The Wilson
    score interval (3 of 3: 0.44 to 1) is kept instead, so 3 votes never look certain."""
    h = ratings.leaderboard([(1, 0, "a", 3)]).head_to_head_of(1, 0)
    assert (h.win_rate, h.upper) == (1.0, 1.0) and h.lower == pytest.approx(0.4385, abs=1e-4)
    low, high = ratings.wilson_interval(np.array([50.0]), np.array([100.0]))
    assert (low[0], high[0]) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    # with many votes the bootstrap's and Wilson's intervals are about the same
    board = ratings.leaderboard(synthetic_votes([0.0, 0.4], 2000, seed=9))
    (big,) = board.head_to_head
    wilson = ratings.wilson_interval(
        np.array([big.a_wins + big.ties / 2]), np.array([float(big.votes)])
    )
    assert abs((big.upper - big.lower) - (wilson[1][0] - wilson[0][0])) < 0.01
