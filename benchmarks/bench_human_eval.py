"""Do blind human votes rank the policy versions as the judge does? The support demo after 4
iterations (target: Kendall τ ≥ 0.8 between the leaderboard's order and the judge's mean score;
the intervals of versions the judge separates widely do not overlap).

In one process: `prefloop init --demo support`, then `prefloop loop --simulate --iterations 4`
(3 simulated annotators, the gold judge under Bradley–Terry noise 0.5, the loop's defaults).
During the loop every deploy queues its evaluation pairs and the annotators vote on them at
`eval.human_share` (0.1) beside their preference labels. Then an evaluation round: blind pairs of
every two versions (rejected candidates too) on the 100 held-out prompts, from the replies the
automatic evaluation sampled, and the same annotators vote on all of them (`eval.human_share` 1)
through the queue.

Reported: per version the judge's mean score on those replies (the baseline the votes are
measured against) and its Bradley–Terry rating with the 95% bootstrap interval; Kendall τ between
the two orders; and for every two versions whose judge means differ by at least WIDE points (of
10), whether their intervals are apart.

--quick: 2 iterations. About 5 minutes on 2 cores (4 iterations).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ITERATIONS = 4
WIDE = 1.0  # judge points (0-10) that count as separating two versions widely
NOISE = 0.5
ANNOTATORS = 3


def _setup(root: Path, policy: Path):
    from typer.testing import CliRunner

    from app.cli import cli
    from app.cli_common import runtime

    data_dir = root / "support"
    (data_dir / "policies").mkdir(parents=True)
    shutil.copytree(policy, data_dir / "policies" / "v0")  # the same pi_0, built once
    (data_dir / "prefloop.toml").write_text('demo = "support"\n')
    result = CliRunner().invoke(cli, ["init", "--demo", "support", "--data-dir", str(data_dir)])
    if result.exit_code != 0:
        raise RuntimeError(f"init failed: {result.output}")
    return runtime(data_dir, loop={"auto_continue": True})


def _evaluation_round(rt) -> dict:
    """Pairs of every two versions on every held-out prompt, and votes on all of them."""
    from labeling.demo_task import gold_judge
    from labeling.simulate import simulate_labels
    from storage import crud, evaluation
    from storage.db import transaction
    from training.human_eval import queue_eval_pairs

    settings = rt.effective_settings()
    with transaction(rt.engine, readonly=True) as session:
        versions = [p.version for p in crud.list_policies(session=session)]
        before = evaluation.eval_queue_counts(session=session)
    added = 0
    for a, b in itertools.combinations(versions, 2):
        report = queue_eval_pairs(
            engine=rt.engine,
            settings=settings,
            a_version=b,
            b_version=a,
            n_prompts=settings.eval.n_prompts,
            reason="benchmark",
        )
        added += report["added"]
    with transaction(rt.engine, readonly=True) as session:
        queued = evaluation.eval_queue_counts(session=session)["queued"]
    first = settings.model_copy(
        update={"eval": settings.eval.model_copy(update={"human_share": 1.0})}
    )
    start = time.perf_counter()
    votes = simulate_labels(
        engine=rt.engine,
        settings=first,
        annotators=ANNOTATORS,
        noise=NOISE,
        judge=gold_judge,
        max_labels=queued,  # evaluation pairs come first: exactly the queued ones
        seed=101,
    )
    return {
        "versions": versions,
        "votes_in_loop": before["votes"],
        "pairs_added": added,
        "votes": votes,
        "vote_seconds": time.perf_counter() - start,
    }


def _judge_means(rt, versions: list[int]) -> dict[int, float]:
    """Each version's mean gold score on the automatic evaluation's replies (cached)."""
    from training.evaluate import gold_judge, head_to_head

    settings = rt.effective_settings()
    judge = gold_judge(settings)
    return {
        v: head_to_head(
            engine=rt.engine, settings=settings, a_version=v, b_versions=[], judge=judge
        )["mean"]["gold"]
        for v in versions
    }


def main(quick: bool = False) -> None:
    os.environ.setdefault("PREFLOOP_ADMIN_PASSWORD", "bench-human-eval-" + os.urandom(8).hex())
    from scipy.stats import kendalltau

    from app.cli_training import run_loop
    from benchmarks.bench_training import demo_policy
    from labeling.judges import DEFAULT_JUDGE
    from training.human_eval import human_leaderboard

    iterations = 2 if quick else ITERATIONS
    cache = Path(os.environ.get("PREFLOOP_TEST_CACHE") or tempfile.gettempdir())
    policy = demo_policy(cache)
    with tempfile.TemporaryDirectory(prefix="bench-human-eval-") as tmp:
        rt = _setup(Path(tmp), policy)
        start = time.perf_counter()
        for line in run_loop(rt, iterations=iterations, judge=DEFAULT_JUDGE, noise=NOISE, seed=0):
            print(
                f"  iteration {line['iteration']}: v{line['candidate_version']} "
                f"{line['decision']}, gold win-rate vs pi_0 {line['gold_win_rate_vs_pi0']}",
                flush=True,
            )
            if line["decision"] == "failed":
                raise RuntimeError(f"iteration {line['iteration']} failed: {line['error']}")
        loop_seconds = time.perf_counter() - start
        round_ = _evaluation_round(rt)
        board = human_leaderboard(engine=rt.engine, settings=rt.effective_settings())
        means = _judge_means(rt, round_["versions"])
        rt.engine.dispose()

    rated = {r.version: r for r in board.ratings}
    versions = [v for v in round_["versions"] if v in rated]
    # rounded: with 5 versions tau moves in steps of 0.2, and 9 of 10 pairs agreeing is 0.8
    tau = round(
        float(
            kendalltau([means[v] for v in versions], [rated[v].rating for v in versions]).statistic
        ),
        6,
    )
    discordant = [
        (a, b)
        for a, b in itertools.combinations(versions, 2)
        if (means[a] - means[b]) * (rated[a].rating - rated[b].rating) < 0
    ]
    print(
        f"\nhuman evaluation on the support demo: {iterations} iterations ({loop_seconds:.0f} s), "
        f"{round_['votes_in_loop']} votes cast during the loop at eval.human_share, then "
        f"{round_['pairs_added']} evaluation pairs of every two versions, {round_['votes']} "
        f"votes ({round_['vote_seconds']:.0f} s); {board.votes} votes in all, "
        f"{board.resamples} bootstrap resamples"
    )
    print(f"{'version':<8} {'status':<9} {'judge mean':>10} {'rating':>8}  95% interval  votes")
    for v in sorted(versions, key=lambda v: -means[v]):
        r = rated[v]
        print(
            f"v{v:<7} {board.meta['status'].get(v) or '':<9} {means[v]:>10.3f} {r.rating:>8.1f}  "
            f"{r.lower:>6.0f}..{r.upper:<6.0f} {r.votes:>5}"
        )
    wide = [
        (a, b) for a, b in itertools.combinations(versions, 2) if abs(means[a] - means[b]) >= WIDE
    ]
    apart = [
        (a, b)
        for a, b in wide
        if rated[a].upper < rated[b].lower or rated[b].upper < rated[a].lower
    ]
    print(
        f"Kendall tau (judge mean vs rating): {tau:.3f} (target >= 0.8: "
        f"{'met' if tau >= 0.8 else 'NOT met'}); ordered apart from the judge: "
        + (
            ", ".join(
                f"v{a}/v{b} (judge means {abs(means[a] - means[b]):.3f} apart)"
                for a, b in discordant
            )
            or "none"
        )
    )
    overlapping = sorted(set(wide) - set(apart))
    print(
        f"versions the judge separates by >= {WIDE} points: {len(wide)} pairs, intervals apart "
        f"for {len(apart)}" + (f"; overlapping: {overlapping}" if overlapping else "")
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
