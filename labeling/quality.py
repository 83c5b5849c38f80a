"""Label quality: do annotators agree with each other, with the proxy, and is the proxy right?

- Cohen's κ for every two annotators who labeled at least `min_common` pairs in common;
- Krippendorff's α (nominal) over all human labels of pairs labeled more than once;
- annotator-vs-proxy agreement: a human a/b label against the proxy's suggestion (P > 0.5 means a);
- proxy accuracy on audited pairs (confident pairs humans labeled anyway), against the majority;
- the proxy's calibration error: are its P values right, over every human a/b label of a pair it
  suggested on (ECE, `calibration_error`);
- per annotator (the annotator dashboard): labels, labels per hour of labeling (3600 x labels /
  the seconds they took), median seconds per label, the share made faster than
  `labeling.too_fast_seconds`, agreement with peers (the mean of their Cohen's κ with each peer
  they share `min_common` pairs with), agreement with the proxy, gold accuracy with its count and
  flag (storage/gold.py);
- per criterion (`labeling.criteria`): the annotators' agreement on it (the share of every two
  judgments of a pair that match, and α), and per annotator the share of their judgments that
  match their peers' on the same pair.
Ties and both_bad count as their own categories for κ and α, and are left out of the proxy
comparisons (the proxy only says a or b).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from storage import crud, gold, pairs
from storage.db import transaction
from storage.gold import GoldRule, GoldStanding
from storage.models import Choice, LabelSource, Route
from storage.settings import LabelingSettings

CATEGORIES = (Choice.a, Choice.b, Choice.tie, Choice.both_bad)


def cohens_kappa(x: list[str], y: list[str]) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e); None when undefined (both always said the same one thing)."""
    if len(x) != len(y) or not x:
        raise ValueError("cohens_kappa needs two equally long, non-empty label lists")
    n = len(x)
    p_o = sum(a == b for a, b in zip(x, y, strict=True)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in set(cx) | set(cy)) / (n * n)
    if p_e == 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def krippendorff_alpha(by_pair: dict[int, dict[int, Choice]]) -> float | None:
    import krippendorff

    users = sorted({u for labels in by_pair.values() for u in labels})
    items = [pid for pid, labels in by_pair.items() if len(labels) >= 2]
    if len(users) < 2 or not items:
        return None
    code = {c: float(i) for i, c in enumerate(CATEGORIES)}
    data = np.full((len(users), len(items)), np.nan)
    row = {u: i for i, u in enumerate(users)}
    for col, pid in enumerate(items):
        for user, choice in by_pair[pid].items():
            data[row[user], col] = code[choice]
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None  # one category only: α is undefined
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def _agrees(choice: Choice, p_a: float) -> bool | None:
    if choice not in (Choice.a, Choice.b) or p_a == 0.5:
        return None
    return (choice == Choice.a) == (p_a > 0.5)


def calibration_error(p: Any, y: Any, bins: int = 10) -> float | None:
    """Expected calibration error: |mean P − the share of a-wins| in each of `bins` equal-width
    bins of P(a ≻ b), weighted by the bin's size. `y`: 1 where a won, 0 where b did."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) == 0:
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = sum(
        abs(p[which == k].mean() - y[which == k].mean()) * np.count_nonzero(which == k)
        for k in np.unique(which)
    )
    return round(float(total) / len(p), 4)


def quality_report(
    *, engine: Engine, min_common: int = 5, labeling: LabelingSettings | None = None
) -> dict[str, Any]:
    """Agreement, the proxy's quality, and the annotator dashboard (module notes), with the
    too-fast threshold and gold rule of `labeling` (default: the defaults)."""
    labeling = labeling or LabelingSettings()
    with transaction(engine, readonly=True) as session:
        labels = pairs.labeled_pairs(session=session, sources=(LabelSource.human,))
        suggestions = pairs.latest_suggestions(
            session=session, pair_ids=sorted({x.pair_id for x in labels})
        )
        names = {u.id: u.name for u in crud.list_users(session=session)}
        standing = {
            s.user_id: s for s in gold.gold_standing(session=session, rule=GoldRule.of(labeling))
        }

    by_pair: dict[int, dict[int, Choice]] = defaultdict(dict)
    route_of: dict[int, Route] = {}
    per_user: dict[int, dict[str, list]] = defaultdict(lambda: {"seconds": [], "agree": []})
    calibration: list[tuple[float, int]] = []  # (P(a > b), 1 if the label says a)
    counts: Counter[int] = Counter()
    for x in labels:
        by_pair[x.pair_id][x.user_id] = x.choice
        route_of[x.pair_id] = x.route
        counts[x.user_id] += 1
        if x.seconds is not None:
            per_user[x.user_id]["seconds"].append(x.seconds)
        if (s := suggestions.get(x.pair_id)) is not None:
            agree = _agrees(x.choice, s.p_a)
            if agree is not None:
                per_user[x.user_id]["agree"].append(agree)
            if x.choice in (Choice.a, Choice.b):
                calibration.append((s.p_a, int(x.choice == Choice.a)))

    criteria = _criterion_agreement(labels)
    kappas = []
    peer_kappas: dict[int, list[float]] = defaultdict(list)
    users = sorted(set(counts) | set(standing))  # a gold label alone makes an annotator
    for u, v in combinations(users, 2):
        common = [pid for pid, lab in by_pair.items() if u in lab and v in lab]
        if len(common) < min_common:
            continue
        kappa = cohens_kappa([by_pair[p][u] for p in common], [by_pair[p][v] for p in common])
        if kappa is not None:
            peer_kappas[u].append(kappa)
            peer_kappas[v].append(kappa)
        kappas.append(
            {
                "a": names.get(u, u),
                "b": names.get(v, v),
                "n": len(common),
                "kappa": None if kappa is None else round(kappa, 4),
            }
        )

    audit_hits = []
    for pid, lab in by_pair.items():
        if route_of[pid] != Route.audit or pid not in suggestions:
            continue
        votes = Counter(c for c in lab.values() if c in (Choice.a, Choice.b))
        if not votes or votes[Choice.a] == votes[Choice.b]:
            continue
        majority = Choice.a if votes[Choice.a] > votes[Choice.b] else Choice.b
        agree = _agrees(majority, suggestions[pid].p_a)
        if agree is not None:
            audit_hits.append(agree)

    all_agree = [a for stats in per_user.values() for a in stats["agree"]]
    alpha = krippendorff_alpha(by_pair)
    return {
        "human_labels": len(labels),
        "pairs_labeled": len(by_pair),
        "pairs_multi_labeled": sum(1 for lab in by_pair.values() if len(lab) >= 2),
        "krippendorff_alpha": None if alpha is None else round(alpha, 4),
        "cohen_kappa": kappas,
        "human_proxy_agreement": _rate(all_agree),
        "human_proxy_n": len(all_agree),
        "proxy_audit_accuracy": _rate(audit_hits),
        "proxy_audit_n": len(audit_hits),
        "proxy_calibration_error": calibration_error(
            [p for p, _ in calibration], [y for _, y in calibration]
        ),
        "proxy_calibration_n": len(calibration),
        "too_fast_seconds": labeling.too_fast_seconds,
        "annotators": [
            {
                "name": names.get(u, u),
                "labels": counts[u],
                **_pace(per_user[u]["seconds"], labeling.too_fast_seconds),
                "peer_kappa": (
                    round(statistics.fmean(peer_kappas[u]), 4) if peer_kappas[u] else None
                ),
                "proxy_agreement": _rate(per_user[u]["agree"]),
                **_gold_figures(standing.get(u), labeling),
                "criteria_agreement": {
                    name: _rate(figures["by_user"].get(u, [])) for name, figures in criteria.items()
                },
            }
            for u in users
        ],
        "criteria": {
            name: {key: value for key, value in figures.items() if key != "by_user"}
            for name, figures in criteria.items()
        },
    }


def _criterion_agreement(labels: list) -> dict[str, dict[str, Any]]:
    """{criterion: {pairs_multi_judged, agreement, n, krippendorff_alpha, by_user}}: every two
    judgments on a pair compared (`n` comparisons), `by_user` each annotator's matches."""
    judged: dict[str, dict[int, dict[int, Choice]]] = defaultdict(lambda: defaultdict(dict))
    for x in labels:
        for name, choice in (x.criteria or {}).items():
            judged[name][x.pair_id][x.user_id] = Choice(choice)
    out = {}
    for name in sorted(judged):
        by_pair = judged[name]
        matches: list[bool] = []
        by_user: dict[int, list[bool]] = defaultdict(list)
        for choices in by_pair.values():
            for (u, cu), (v, cv) in combinations(sorted(choices.items()), 2):
                matches.append(cu == cv)
                by_user[u].append(cu == cv)
                by_user[v].append(cu == cv)
        alpha = krippendorff_alpha(by_pair)
        out[name] = {
            "pairs_judged": len(by_pair),
            "pairs_multi_judged": sum(1 for c in by_pair.values() if len(c) >= 2),
            "agreement": _rate(matches),
            "n": len(matches),
            "krippendorff_alpha": None if alpha is None else round(alpha, 4),
            "by_user": by_user,
        }
    return out


def _pace(seconds: list[float], too_fast: float) -> dict[str, float | None]:
    """Labels per hour of labeling, median seconds, the share made faster than `too_fast`."""
    if not seconds:
        return {"labels_per_hour": None, "median_seconds": None, "too_fast_share": None}
    spent = sum(seconds)
    return {
        "labels_per_hour": round(3600 * len(seconds) / spent, 1) if spent > 0 else None,
        "median_seconds": round(statistics.median(seconds), 2),
        "too_fast_share": round(sum(s < too_fast for s in seconds) / len(seconds), 4),
    }


def _gold_figures(s: GoldStanding | None, labeling: LabelingSettings) -> dict[str, Any]:
    return {
        "gold_seen": 0 if s is None else s.seen,
        "gold_accuracy": None if s is None else s.accuracy,
        "gold_flagged": s is not None and s.flagged,
        "labels_left_out": s is not None and s.flagged and labeling.gold_filter,
    }


def annotator_figures(
    *, engine: Engine, user_id: int, labeling: LabelingSettings
) -> dict[str, Any]:
    """One annotator's own figures (the labeling page's line): labels, pace, agreement with
    their peers on the pairs they share (the share of the others' labels that match theirs),
    gold accuracy. Reads their labels and the others' on the same pairs only."""
    with transaction(engine, readonly=True) as session:
        own, others = pairs.shared_labels(session=session, user_id=user_id)
        standing = next(
            (
                s
                for s in gold.gold_standing(session=session, rule=GoldRule.of(labeling))
                if s.user_id == user_id
            ),
            None,
        )
    seconds = [s for _, _, s in own if s is not None]
    mine = {pair_id: choice for pair_id, choice, _ in own}
    matches = [mine[pair_id] == choice for pair_id, choice in others if pair_id in mine]
    return {
        "labels": len(own),
        **_pace(seconds, labeling.too_fast_seconds),
        "peer_agreement": _rate(matches),
        "peer_n": len(matches),
        **_gold_figures(standing, labeling),
    }


def _rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None
