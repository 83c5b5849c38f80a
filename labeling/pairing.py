"""Which two of a prompt's responses become a pair.

`select_pairs` picks up to k pairs of response indices for one prompt by a strategy:
- ``max_min``: the proxy's best against its worst, then the next best against the next worst (the
  RLHF Workflow default);
- ``max_random``: the best against a random other;
- ``random``: two at random;
- ``uncertain``: the pair the proxy is least sure about (ensemble disagreement, or the feature
  difference's norm under the inverse covariance; a proxy with neither: P closest to 0.5);
- ``explore``: the main policy's best against the enhancer sample the proxy is least sure about
  relative to it (arXiv 2312.11456: the main agent exploits, the enhancer explores).
Identical texts are never paired, and with a fitted proxy neither are exact reward ties (the proxy
then has no opinion to offer). An unknown strategy raises.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from labeling.proxy import GroupScores
from storage.models import PairStrategy


def _pairable(texts: Sequence[str], rewards: np.ndarray, fitted: bool, i: int, j: int) -> bool:
    if i == j or texts[i].strip() == texts[j].strip():
        return False
    return not (fitted and rewards[i] == rewards[j])


def _doubt(scores: GroupScores, i: int, j: int, uncertainty: str) -> float:
    """How unsure the proxy is about i vs j: larger is less sure."""
    if uncertainty == "covariance" and scores.bonus is not None:
        return float(scores.bonus[i, j])
    if scores.members is not None and len(scores.members) > 1:
        return scores.uncertainty(i, j)
    return -abs(scores.p(i, j) - 0.5)


def select_pairs(
    strategy: PairStrategy | str,
    scores: GroupScores,
    texts: Sequence[str],
    *,
    rng: random.Random,
    k: int = 1,
    fitted: bool = True,
    enhancer: Sequence[bool] | None = None,
    uncertainty: str = "ensemble",
) -> list[tuple[int, int]]:
    """Up to k (i, j) index pairs; i is the proxy's favourite where the strategy has one.

    `enhancer[i]` marks the enhancer's samples (explore only; the others are the main policy's)."""
    strategy = PairStrategy(strategy)
    rewards = np.asarray(scores.rewards, dtype=float)
    n = len(texts)
    if len(rewards) != n:
        raise ValueError(f"{n} texts but {len(rewards)} rewards")
    main = [i for i in range(n) if not (enhancer and enhancer[i])]
    used: set[int] = set()
    picked: list[tuple[int, int]] = []

    def ok(i: int, j: int) -> bool:
        return _pairable(texts, rewards, fitted, i, j) and (i, j) not in picked

    if strategy == PairStrategy.max_min:
        order = sorted(main, key=lambda i: (-rewards[i], i))  # best first
        for i in order:
            if len(picked) == k:
                break
            if i in used:
                continue
            for j in reversed(order):  # worst first
                if j not in used and j != i and rewards[j] <= rewards[i] and ok(i, j):
                    picked.append((i, j))
                    used.update((i, j))
                    break
    elif strategy == PairStrategy.max_random:
        order = sorted(main, key=lambda i: (-rewards[i], i))
        if order:
            best = order[0]
            others = [j for j in order[1:] if ok(best, j)]
            for j in rng.sample(others, min(k, len(others))):
                picked.append((best, j))
    elif strategy == PairStrategy.random:
        candidates = [(i, j) for i, j in combinations(main, 2) if ok(i, j)]
        for i, j in rng.sample(candidates, min(k, len(candidates))):
            picked.append((i, j) if rewards[i] >= rewards[j] else (j, i))
    elif strategy == PairStrategy.uncertain:
        candidates = [(i, j) for i, j in combinations(main, 2) if ok(i, j)]
        rng.shuffle(candidates)  # ties in doubt broken at random
        candidates.sort(key=lambda ij: -_doubt(scores, *ij, uncertainty))
        for i, j in candidates[:k]:
            picked.append((i, j) if rewards[i] >= rewards[j] else (j, i))
    elif strategy == PairStrategy.explore:
        if enhancer is None or not any(enhancer):
            raise ValueError("explore needs enhancer samples (enhancer[i] True for some i)")
        helpers = [j for j in range(n) if enhancer[j]]
        order = sorted(main, key=lambda i: (-rewards[i], i))
        for i in order[:k]:
            options = [j for j in helpers if j not in used and ok(i, j)]
            if not options:
                continue
            rng.shuffle(options)
            j = max(options, key=lambda j: _doubt(scores, i, j, uncertainty))
            picked.append((i, j))
            used.add(j)
    else:  # a new PairStrategy member without a rule here
        raise ValueError(f"pairing strategy {strategy!r} cannot pick pairs of fresh samples")
    return picked
