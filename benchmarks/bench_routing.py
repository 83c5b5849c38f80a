"""Fewer human labels for the same model: all-human labeling against routing, on the support demo.

In one process, on the same seeds: `prefloop init --demo support` (seed preferences, the proxy
fitted on them, round 0 paired by it) and then 3 iterations of `prefloop loop --simulate`, once
per arm:

- all-human: routing off, the 64 pairs of each round labeled by people (`loop.human_quota` 64);
- routing at a human budget of 50% and 25% of that (32 and 16 pairs per round): the proxy labels
  the pairs it is sure of, audits and the pairs it is least sure of go to people.

Simulated annotators are the gold judge under Bradley-Terry noise (the loop's default). After
the third iteration the deployed policy plays pi_0 on the 100 held-out prompts, 4 samples each
(400 slots, more than the gate's 100, so that the arms' difference is not the evaluation's noise).

Reported per arm (the mean over the seeds and its spread, min..max): the gold win-rate against
pi_0, human labels spent, proxy labels trained on and their accuracy against the gold judge,
and the proxy's calibration error (ECE, 10 bins) over every suggestion it made. The baseline of
each ratio is the all-human arm of the same run. Headline:

    routing: <share> of human labels -> <ratio> of the all-human win-rate

--quick: one seed (about 3 minutes on 2 idle cores); the full run: 3 seeds (about 9).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ITERATIONS = 3
ROUND_PAIRS = 64  # generation.prompts_per_round, one pair per prompt
# arm: (human budget per round, or None for all-human; other [routing] settings)
ARMS: dict[str, tuple[int | None, dict]] = {
    "all-human": (None, {}),
    "routing 50%": (32, {}),
    "routing 25%": (16, {}),
}
FINAL_EVAL_SAMPLES = 4


def _settings_file(budget: int | None, seed: int, routing_extra: dict | None = None) -> str:
    routing = (
        "[routing]\nenabled = false\n"
        if budget is None
        else f"[routing]\nenabled = true\nhuman_budget = {budget}\n"
    )
    routing += "".join(f"{key} = {value}\n" for key, value in (routing_extra or {}).items())
    quota = ROUND_PAIRS if budget is None else budget
    return (
        'demo = "support"\n'
        f"{routing}"
        f"[loop]\nhuman_quota = {quota}\n"
        f"[generation]\nprompts_per_round = {ROUND_PAIRS}\nseed = {seed}\n"
        f"[dpo]\nseed = {seed}\n"
    )


def run_arm(
    root: Path, policy: Path, name: str, budget: int | None, seed: int, routing: dict | None = None
) -> dict:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.cli_common import runtime
    from app.cli_training import run_loop
    from labeling.judges import DEFAULT_JUDGE

    data_dir = root / f"{''.join(c if c.isalnum() else '-' for c in name)}-seed{seed}"
    (data_dir / "policies").mkdir(parents=True)
    shutil.copytree(policy, data_dir / "policies" / "v0")  # the same pi_0, built once
    (data_dir / "prefloop.toml").write_text(_settings_file(budget, seed, routing))
    result = CliRunner().invoke(cli, ["init", "--demo", "support", "--data-dir", str(data_dir)])
    if result.exit_code != 0:
        raise RuntimeError(f"init failed for {name}: {result.output}")
    rt = runtime(data_dir, loop={"auto_continue": True})
    for line in run_loop(rt, iterations=ITERATIONS, judge=DEFAULT_JUDGE, seed=seed):
        if line["decision"] == "failed":
            raise RuntimeError(f"{name} seed {seed}: iteration {line['iteration']} failed")
    return {"win_rate": _final_win_rate(rt), **_label_figures(rt)}


def _final_win_rate(rt) -> float:
    """The deployed policy against pi_0 by the gold judge, FINAL_EVAL_SAMPLES per prompt."""
    from storage import crud
    from storage.db import transaction
    from training.evaluate import gold_judge, head_to_head

    settings = rt.effective_settings()
    settings = settings.model_copy(
        update={"eval": settings.eval.model_copy(update={"samples_per_prompt": FINAL_EVAL_SAMPLES})}
    )
    with transaction(rt.engine, readonly=True) as session:
        deployed = crud.deployed_policy(session=session).version
    if deployed == 0:
        return 0.5
    result = head_to_head(
        engine=rt.engine,
        settings=settings,
        a_version=deployed,
        b_versions=[0],
        judge=gold_judge(settings),
    )
    return result["vs"]["v0"]["gold"]["win_rate"]


def _label_figures(rt) -> dict:
    """Human and proxy labels of the iterations, the proxy labels' accuracy against the gold
    judge (pairs it scores equal left out), and the ECE of every suggestion's P(a > b)."""
    from sqlmodel import select

    from labeling.demo_task import gold_judge
    from labeling.quality import calibration_error
    from storage.db import transaction
    from storage.models import (
        Choice,
        Label,
        LabelSource,
        Pair,
        Prompt,
        Response,
        Suggestion,
    )

    with transaction(rt.engine, readonly=True) as session:
        texts = {r.id: r.text for r in session.exec(select(Response))}
        prompts = {p.id: p.text for p in session.exec(select(Prompt))}
        pairs = {p.id: p for p in session.exec(select(Pair).where(Pair.iteration_id.is_not(None)))}
        labels = [lab for lab in session.exec(select(Label)) if lab.pair_id in pairs]
        suggestions = [s for s in session.exec(select(Suggestion)) if s.pair_id in pairs]

    def gold_a_wins(pair_id: int) -> bool | None:
        pair = pairs[pair_id]
        prompt = prompts[pair.prompt_id]
        a = gold_judge(prompt, texts[pair.response_a_id])
        b = gold_judge(prompt, texts[pair.response_b_id])
        return None if a == b else a > b

    proxy = [lab for lab in labels if lab.source == LabelSource.proxy]

    def right(labels: list[Label]) -> list[bool]:
        return [
            (lab.choice == Choice.a) == wins
            for lab in labels
            if lab.choice in (Choice.a, Choice.b) and (wins := gold_a_wins(lab.pair_id)) is not None
        ]

    judged = right(proxy)
    calibration = [
        (s.p_a, float(wins)) for s in suggestions if (wins := gold_a_wins(s.pair_id)) is not None
    ]
    return {
        "human_labels": sum(lab.source == LabelSource.human for lab in labels),
        "proxy_labels": len(proxy),
        "proxy_accuracy": sum(judged) / len(judged) if judged else None,
        "ece": calibration_error([p for p, _ in calibration], [y for _, y in calibration]),
    }


def _mean_spread(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main(quick: bool = False) -> None:
    os.environ.setdefault("PREFLOOP_ADMIN_PASSWORD", "bench-routing-" + os.urandom(8).hex())
    from benchmarks.bench_training import demo_policy

    seeds = [0] if quick else [0, 1, 2]
    cache = Path(os.environ.get("PREFLOOP_TEST_CACHE") or tempfile.gettempdir())
    policy = demo_policy(cache)
    results: dict[str, list[dict]] = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        for seed in seeds:
            for name, (budget, routing) in ARMS.items():
                figures = run_arm(Path(tmp), policy, name, budget, seed, routing)
                results[name].append(figures)
                print(f"  seed {seed} {name}: {figures}", flush=True)

    base = results["all-human"]
    base_win = statistics.fmean(r["win_rate"] for r in base)
    base_humans = statistics.fmean(r["human_labels"] for r in base)
    print(f"\nrouting benchmark, {len(seeds)} seed(s), {ITERATIONS} iterations, mean (min..max)")
    columns = {
        "win vs pi_0": "win_rate",
        "human": "human_labels",
        "proxy (trained)": "proxy_labels",
        "proxy right": "proxy_accuracy",
        "ece": "ece",
    }
    print(f"{'arm':<16} " + " ".join(f"{title:<22}" for title in columns))
    for name, runs in results.items():
        cells = [_mean_spread([r[key] for r in runs]) for key in columns.values()]
        print(f"{name:<16} " + " ".join(f"{cell:<22}" for cell in cells))
    for name, runs in results.items():
        if name == "all-human":
            continue
        share = statistics.fmean(r["human_labels"] for r in runs) / base_humans
        win = statistics.fmean(r["win_rate"] for r in runs)
        gain = (win - 0.5) / (base_win - 0.5) if base_win != 0.5 else float("nan")
        print(
            f"routing: {share:.2f} of human labels -> {win / base_win:.2f} of the all-human "
            f"win-rate ({name}; of the gain over 0.5: {gain:.2f})"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
