"""The leaderboard's Bradley–Terry fit with bootstrap intervals: 1,000 resamples of 5,000 votes
over 10 versions (target: at most 2 s on 2 cores).

Votes are synthetic, drawn from Bradley–Terry with known ratings (10 versions 50 rating points
apart, random pairs, no ties), so the run also checks what the fit recovers: the largest error
against the true ratings and how many true ratings fall inside their 95% intervals.

Measured: `training.ratings.leaderboard` (the fit, 1,000 multinomial resamples of the vote
counts, all fitted at once by batched Newton steps, and the head-to-head intervals), best of 5.
Baseline, in the same process: the per-resample loop a first version would write (and Chatbot
Arena's first bootstrap was): resample the 5,000 votes with replacement, fit each resample on its
own with scipy's L-BFGS on the per-vote likelihood, timed on 20 resamples and scaled to 1,000.

--quick: 200 resamples and 5 for the baseline.
"""

from __future__ import annotations

import math
import os
import sys
import time

VERSIONS = 10
VOTES = 5000
RESAMPLES = 1000
GAP = 50.0  # rating points between neighbouring versions
TARGET_SECONDS = 2.0


def synthetic_votes(seed: int = 0):
    """(version a, version b, choice, n) counts and the true ratings."""
    import numpy as np

    from training.ratings import ANCHOR_RATING, ELO_SCALE

    rng = np.random.default_rng(seed)
    true = np.arange(VERSIONS) * GAP / ELO_SCALE  # θ, v0 at 0
    a = rng.integers(0, VERSIONS, VOTES)
    b = (a + rng.integers(1, VERSIONS, VOTES)) % VERSIONS
    a_won = rng.random(VOTES) < 1 / (1 + np.exp(-(true[a] - true[b])))
    counts: dict[tuple[int, int, str], int] = {}
    for x, y, won in zip(a.tolist(), b.tolist(), a_won.tolist(), strict=True):
        key = (x, y, "a" if won else "b")
        counts[key] = counts.get(key, 0) + 1
    votes = [(x, y, c, n) for (x, y, c), n in sorted(counts.items())]
    return votes, ANCHOR_RATING + ELO_SCALE * true, (a, b, a_won)


def naive_seconds(per_vote, resamples: int, seed: int = 0) -> float:
    """The per-resample loop: each resample of the votes fitted on its own (L-BFGS)."""
    import numpy as np
    from scipy.optimize import minimize

    from training.ratings import PRIOR

    a, b, a_won = per_vote
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(resamples):
        idx = rng.integers(0, VOTES, VOTES)
        ra, rb, won = a[idx], b[idx], a_won[idx].astype(float)

        def objective(free, ra=ra, rb=rb, won=won):
            theta = np.concatenate([[0.0], free])
            d = theta[ra] - theta[rb]
            p = 1 / (1 + np.exp(-d))
            loss = -(won * -np.logaddexp(0, -d) + (1 - won) * -np.logaddexp(0, d)).sum()
            grad_d = -(won - p)
            grad = np.bincount(ra, grad_d, VERSIONS) - np.bincount(rb, grad_d, VERSIONS)
            loss += PRIOR / 2 * (free**2).sum()
            return loss, grad[1:] + PRIOR * free

        minimize(objective, np.zeros(VERSIONS - 1), jac=True, method="L-BFGS-B")
    return time.perf_counter() - start


def main(quick: bool = False) -> None:
    from training.ratings import leaderboard

    resamples = 200 if quick else RESAMPLES
    naive_resamples = 5 if quick else 20
    votes, true, per_vote = synthetic_votes()
    leaderboard(votes, resamples=10)  # warm up numpy's code paths
    times = []
    for _ in range(5):
        start = time.perf_counter()
        board = leaderboard(votes, resamples=resamples, seed=0)
        times.append(time.perf_counter() - start)
    best = min(times)
    naive = naive_seconds(per_vote, naive_resamples) * resamples / naive_resamples

    by_version = {r.version: r for r in board.ratings}
    errors = [abs(by_version[v].rating - true[v]) for v in range(VERSIONS)]
    covered = sum(by_version[v].lower <= true[v] <= by_version[v].upper for v in range(VERSIONS))
    width = max(r.upper - r.lower for r in board.ratings)
    order = [r.version for r in board.ratings]
    print(
        f"leaderboard: {VERSIONS} versions, {VOTES} votes, {resamples} bootstrap resamples, "
        f"{os.cpu_count()} CPUs visible"
    )
    print(
        f"  batched fit + bootstrap: {best:.3f} s (best of 5; median "
        f"{sorted(times)[2]:.3f} s), target <= {TARGET_SECONDS} s: "
        f"{'met' if best <= TARGET_SECONDS else 'NOT met'}"
    )
    print(
        f"  per-resample L-BFGS loop (baseline): {naive:.2f} s for {resamples} "
        f"({naive_resamples} timed, scaled)"
    )
    print(f"  speed-up: {naive / best:.0f}x the baseline")
    print(
        f"  recovery: largest error {max(errors):.1f} rating points (neighbours {GAP:.0f} apart), "
        f"{covered}/{VERSIONS} true ratings inside their 95% interval (v0 is the anchor), widest "
        f"interval {width:.0f} points, order {'exact' if order == sorted(order, reverse=True) else order}"
    )
    if not math.isfinite(best):
        raise RuntimeError("no timing")
    sys.stdout.flush()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
