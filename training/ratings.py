"""Ratings of policy versions from human evaluation votes: a Bradley–Terry fit with bootstrap
intervals, and head-to-head win-rates, as Chatbot Arena rates models.

The model: P(version i beats version j) = σ(θ_i − θ_j). A vote for i is a win of i, a tie (and a
both-bad vote: neither reply is better) is half a win each way. θ is fitted by maximum likelihood
with a weak Gaussian prior (`PRIOR`, on the logit scale) that keeps a version that won or lost
every vote finite, by Newton's method. Ratings are shown on an Elo-like scale,
`ANCHOR_RATING + ELO_SCALE · θ` (400 points: 10-to-1 odds), with θ of the anchor, π_0 (the first
version with votes), fixed at 0: π_0 is always 1000 and every other rating reads as odds against it.

Intervals come from a bootstrap over votes (resampling votes with replacement, as the arena
does); a head-to-head win-rate's is the wider of the bootstrap's and the Wilson score interval,
since a bootstrap of a few votes that all went one way has no width. The fit only needs, per pair of versions, how many votes went each way, so a resample is
drawn directly as multinomial counts over the (pair, outcome) cells, and all resamples are
fitted at once: Newton steps on a (resamples, versions) array, one batched linear solve per step.
1,000 resamples of 5,000 votes over 10 versions take milliseconds (benchmarks/bench_leaderboard.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # rating points per unit of θ
ANCHOR_RATING = 1000.0
PRIOR = 0.01  # precision of the N(0, 1/PRIOR) prior on each θ (the anchor's is fixed at 0)
MAX_STEP = 2.0  # the largest Newton step in θ: keeps the first steps from overshooting
INTERVAL = 0.95

# outcome columns of a pair's counts: i won, j won, tie (or both bad)
I_WINS, J_WINS, TIES = 0, 1, 2


@dataclass(frozen=True)
class PairCounts:
    """Votes aggregated by pair of versions: versions[i[p]] against versions[j[p]], i < j."""

    versions: np.ndarray  # (K,) version numbers, ascending
    i: np.ndarray  # (P,) index of the first version of each pair
    j: np.ndarray  # (P,)
    counts: np.ndarray  # (P, 3): i won, j won, ties

    @classmethod
    def from_votes(cls, votes: list[tuple[int, int, str, int]]) -> PairCounts:
        """From (version a, version b, choice, n) rows: choice a means a won; tie and both_bad
        are ties."""
        cells: dict[tuple[int, int], np.ndarray] = {}
        for va, vb, choice, n in votes:
            if va == vb:
                continue
            lo, hi = min(va, vb), max(va, vb)
            row = cells.setdefault((lo, hi), np.zeros(3))
            if choice in ("a", "b"):
                winner = va if choice == "a" else vb
                row[I_WINS if winner == lo else J_WINS] += n
            else:
                row[TIES] += n
        versions = np.array(sorted({v for key in cells for v in key}), dtype=np.int64)
        index = {int(v): k for k, v in enumerate(versions)}
        keys = sorted(cells)
        return cls(
            versions=versions,
            i=np.array([index[lo] for lo, _ in keys], dtype=np.int64),
            j=np.array([index[hi] for _, hi in keys], dtype=np.int64),
            counts=np.array([cells[key] for key in keys]).reshape(len(keys), 3),
        )

    @property
    def n_votes(self) -> int:
        return int(self.counts.sum())


def fit_theta(
    wins: np.ndarray,
    games: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    n_versions: int,
    *,
    anchor: int = 0,
    prior: float = PRIOR,
    tol: float = 1e-9,
    max_iter: int = 100,
) -> np.ndarray:
    """Bradley–Terry θ for B data sets at once.

    wins, games: (B, P) wins of i[p] over j[p] (ties as halves) and votes of each pair, per data
    set. Returns θ: (B, K), θ[:, anchor] = 0. Each Newton step solves all B (K-1)-dimensional
    systems in one batched call; the objective is strictly concave (the prior), so it converges
    in a handful of steps."""
    wins, games = np.atleast_2d(wins).astype(float), np.atleast_2d(games).astype(float)
    n_sets = wins.shape[0]
    incidence = np.zeros((len(i), n_versions))  # (P, K): +1 at i, -1 at j
    incidence[np.arange(len(i)), i] = 1.0
    incidence[np.arange(len(j)), j] = -1.0
    free = np.array([k for k in range(n_versions) if k != anchor])
    d_free = incidence[:, free]  # (P, K-1)
    theta = np.zeros((n_sets, len(free)))
    eye = np.eye(len(free))
    for _ in range(max_iter):
        diff = theta @ d_free.T  # (B, P): θ_i − θ_j
        p = 1.0 / (1.0 + np.exp(-diff))
        grad = (wins - games * p) @ d_free - prior * theta  # (B, K-1)
        weight = games * p * (1.0 - p)  # (B, P)
        # minus the Hessian: Dᵀ diag(weight) D + prior·I, (B, K-1, K-1)
        hess = np.einsum("bp,pk,pl->bkl", weight, d_free, d_free) + prior * eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        step = np.clip(step, -MAX_STEP, MAX_STEP)
        theta += step
        if np.abs(step).max() < tol:
            break
    out = np.zeros((n_sets, n_versions))
    out[:, free] = theta
    return out


def wins_and_games(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., P, 3) counts -> wins of i (ties as halves) and games, each (..., P)."""
    return counts[..., I_WINS] + 0.5 * counts[..., TIES], counts.sum(axis=-1)


def wilson_interval(
    wins: np.ndarray, games: np.ndarray, z: float = 1.959964
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of wins / games (ties as half wins), elementwise."""
    n = np.maximum(games, 1e-12)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def bootstrap_counts(counts: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap resamples of the votes, as counts: (B, P, 3). Resampling N votes
    with replacement is a multinomial draw of N over the (pair, outcome) cells with the
    observed shares."""
    flat = counts.reshape(-1)
    total = int(flat.sum())
    drawn = rng.multinomial(total, flat / total, size=resamples)
    return drawn.reshape(resamples, *counts.shape).astype(float)


@dataclass(frozen=True)
class Rating:
    version: int
    rating: float
    lower: float  # the bootstrap's 95% interval
    upper: float
    votes: int  # votes it took part in
    win_rate_vs_anchor: float | None  # its own head-to-head against the anchor, ties half
    votes_vs_anchor: int


@dataclass(frozen=True)
class HeadToHead:
    """Versions a < b that met: a's win-rate over b (ties half) with its 95% interval (the wider
    of the bootstrap's and the Wilson score interval)."""

    a: int
    b: int
    votes: int
    a_wins: int
    b_wins: int
    ties: int
    win_rate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[Rating]  # best first
    head_to_head: list[HeadToHead]
    anchor: int | None  # the version fixed at ANCHOR_RATING
    votes: int
    resamples: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def head_to_head_of(self, a: int, b: int) -> HeadToHead | None:
        """The head-to-head of `a` against `b` (in that order), None if they never met."""
        return _oriented(self.head_to_head, a, b)


def _oriented(pairs: list[HeadToHead], a: int, b: int) -> HeadToHead | None:
    for h in pairs:
        if (h.a, h.b) == (a, b):
            return h
        if (h.a, h.b) == (b, a):
            return HeadToHead(
                a=a,
                b=b,
                votes=h.votes,
                a_wins=h.b_wins,
                b_wins=h.a_wins,
                ties=h.ties,
                win_rate=round(1.0 - h.win_rate, 4),
                lower=round(1.0 - h.upper, 4),
                upper=round(1.0 - h.lower, 4),
            )
    return None


def _elo(theta: np.ndarray) -> np.ndarray:
    return ANCHOR_RATING + ELO_SCALE * theta


def leaderboard(
    votes: list[tuple[int, int, str, int]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    anchor: int | None = None,
) -> Leaderboard:
    """Ratings with 95% bootstrap intervals and head-to-head win-rates from (version a,
    version b, choice, n) vote counts. `anchor`: the version fixed at ANCHOR_RATING (default:
    the lowest version with votes, π_0 once it has any). Deterministic for a `seed`."""
    data = PairCounts.from_votes(votes)
    if data.n_votes == 0:
        return Leaderboard([], [], None, 0, resamples, seed)
    k = len(data.versions)
    index = {int(v): n for n, v in enumerate(data.versions)}
    if anchor is None or anchor not in index:
        anchor = int(data.versions[0])
    wins, games = wins_and_games(data.counts)
    theta = fit_theta(wins, games, data.i, data.j, k, anchor=index[anchor])[0]

    rng = np.random.default_rng(seed)
    boot = bootstrap_counts(data.counts, resamples, rng)  # (B, P, 3)
    boot_wins, boot_games = wins_and_games(boot)
    boot_theta = fit_theta(boot_wins, boot_games, data.i, data.j, k, anchor=index[anchor])
    tail = (1.0 - INTERVAL) / 2 * 100
    low, high = np.percentile(_elo(boot_theta), [tail, 100 - tail], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_rate = boot_wins / boot_games  # (B, P); NaN where a resample drew no vote
    rate_low, rate_high = np.nanpercentile(boot_rate, [tail, 100 - tail], axis=0)
    # A resample of a few votes that all went one way goes that way too: the bootstrap's interval
    # has no width there. The Wilson score interval does; the wider of the two is kept.
    wilson_low, wilson_high = wilson_interval(wins, games)
    rate_low, rate_high = np.minimum(rate_low, wilson_low), np.maximum(rate_high, wilson_high)

    pairs = []
    for p in range(len(data.i)):
        i_wins, j_wins, ties = (int(x) for x in data.counts[p])
        pairs.append(
            HeadToHead(
                a=int(data.versions[data.i[p]]),
                b=int(data.versions[data.j[p]]),
                votes=i_wins + j_wins + ties,
                a_wins=i_wins,
                b_wins=j_wins,
                ties=ties,
                win_rate=round(float(wins[p] / games[p]), 4),
                lower=round(float(rate_low[p]), 4),
                upper=round(float(rate_high[p]), 4),
            )
        )
    per_version = np.zeros(k, dtype=np.int64)
    np.add.at(per_version, data.i, games.astype(np.int64))
    np.add.at(per_version, data.j, games.astype(np.int64))
    ratings = []
    for n, version in enumerate(int(v) for v in data.versions):
        versus = None if version == anchor else _oriented(pairs, version, anchor)
        ratings.append(
            Rating(
                version=version,
                rating=round(float(_elo(theta[n])), 1),
                lower=round(float(low[n]), 1),
                upper=round(float(high[n]), 1),
                votes=int(per_version[n]),
                win_rate_vs_anchor=None if versus is None else versus.win_rate,
                votes_vs_anchor=0 if versus is None else versus.votes,
            )
        )
    ratings.sort(key=lambda r: (-r.rating, r.version))
    return Leaderboard(ratings, pairs, anchor, data.n_votes, resamples, seed)
