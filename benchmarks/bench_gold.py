"""Gold pairs against a careless annotator, on the support demo.

In one process, per seed: `prefloop init --demo support`, 64 gold pairs imported (two
corpus-quality replies a gold-judge gap of 3 or more apart, `demo_task.gold_pairs`), then 3
iterations of `prefloop loop --simulate` with 3 simulated annotators, sim-3 careless: on half of
its pairs it answers at random (any of A, B, tie, both bad). Gold pairs come at
`labeling.gold_rate` 0.1, every other setting is the default (flagged under 0.8 gold accuracy after
10 gold pairs). Each round is 192 pairs (`generation.prompts_per_round`, `loop.human_quota`), so
each annotator labels about 64 pairs and 7 gold pairs a round. Two arms from the same start:

- gold-filtered: `labeling.gold_filter` on (the default): once flagged, sim-3's labels are left
  out of DPO data and the proxy's refit;
- all labels: `labeling.gold_filter` off: the flag is shown, every label is trained on.

Reported per seed and as the mean with its spread (min..max): when each annotator was flagged
(the gold label at which its running accuracy first fell under the bar; never, for the careful
ones), each arm's final policy against pi_0 by the gold judge, and head to head, the gold-filtered
arm's final policy against the all-labels arm's on the 100 held-out prompts, 4 samples each (400
slots). Targets: sim-3 flagged within 20 gold labels and the others never; head to head >= 0.55.

--quick: one seed; the full run: 3 seeds, or `python -m benchmarks.bench_gold --seed N` for some
(each arm takes 10-25 minutes on the shared 2-core machine: they run one at a time).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ITERATIONS = 3
ROUND_PAIRS = 192
GOLD_PAIRS = 64
CARELESS = {3: 0.5}
FINAL_EVAL_SAMPLES = 4
ARMS = {"gold-filtered": True, "all labels": False}


def _settings_file(seed: int, gold_filter: bool) -> str:
    return (
        'demo = "support"\n'
        f"[labeling]\ngold_rate = 0.1\ngold_filter = {str(gold_filter).lower()}\n"
        f"[loop]\nhuman_quota = {ROUND_PAIRS}\n"
        f"[generation]\nprompts_per_round = {ROUND_PAIRS}\nseed = {seed}\n"
        f"[dpo]\nseed = {seed}\n"
    )


def run_arm(root: Path, policy: Path, name: str, gold_filter: bool, seed: int) -> dict:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.cli_common import runtime
    from app.cli_training import run_loop
    from labeling.demo_task import gold_pairs
    from labeling.gold import import_gold
    from labeling.judges import DEFAULT_JUDGE
    from storage.crud import PromptIn
    from storage.gold import GoldIn
    from storage.models import Choice

    data_dir = root / f"{''.join(c if c.isalnum() else '-' for c in name)}-seed{seed}"
    (data_dir / "policies").mkdir(parents=True)
    shutil.copytree(policy, data_dir / "policies" / "v0")
    (data_dir / "prefloop.toml").write_text(_settings_file(seed, gold_filter))
    result = CliRunner().invoke(cli, ["init", "--demo", "support", "--data-dir", str(data_dir)])
    if result.exit_code != 0:
        raise RuntimeError(f"init failed for {name}: {result.output}")
    rt = runtime(data_dir, loop={"auto_continue": True})
    items = [
        GoldIn(PromptIn(prompt), a, b, Choice(answer))
        for prompt, a, b, answer in gold_pairs(GOLD_PAIRS, seed=seed)
    ]
    import_gold(engine=rt.engine, items=items, user_id=None, via="bench")
    for line in run_loop(
        rt, iterations=ITERATIONS, judge=DEFAULT_JUDGE, seed=seed, careless=CARELESS
    ):
        if line["decision"] == "failed":
            raise RuntimeError(f"{name} seed {seed}: iteration {line['iteration']} failed")
    return {"rt": rt, **_figures(rt)}


def _figures(rt) -> dict:
    from storage import crud, gold
    from storage.db import transaction
    from storage.gold import GoldRule
    from training.evaluate import gold_judge, head_to_head

    labeling = rt.effective_settings().labeling
    rule = GoldRule.of(labeling)
    with transaction(rt.engine, readonly=True) as session:
        users = {u.name: u.id for u in crud.list_users(session=session) if u.name.startswith("sim")}
        histories = {
            name: gold.gold_history(session=session, user_id=uid) for name, uid in users.items()
        }
        deployed = crud.deployed_policy(session=session)
        policy = {"version": deployed.version, "path": deployed.path}
        with_flagged = crud.label_counts(session=session).get("human", 0)
    settings = rt.effective_settings()
    settings = settings.model_copy(
        update={"eval": settings.eval.model_copy(update={"samples_per_prompt": FINAL_EVAL_SAMPLES})}
    )
    win = 0.5
    if deployed.version != 0:
        result = head_to_head(
            engine=rt.engine,
            settings=settings,
            a_version=deployed.version,
            b_versions=[0],
            judge=gold_judge(settings),
        )
        win = result["vs"]["v0"]["gold"]["win_rate"]
    return {
        "flagged_at": {name: rule.first_flag(h) for name, h in sorted(histories.items())},
        "gold_seen": {name: len(h) for name, h in sorted(histories.items())},
        "gold_accuracy": {
            name: round(sum(h) / len(h), 3) if h else None for name, h in sorted(histories.items())
        },
        "human_labels": with_flagged,
        "policy": policy,
        "win_vs_pi0": win,
    }


def head_to_head_arms(a: dict, b: dict) -> dict:
    """The final policies of two arms against each other by the gold judge."""
    from storage.models import Policy
    from training.evaluate import compare, eval_prompts, gold_judge

    rt = a["rt"]
    settings = rt.effective_settings()
    settings = settings.model_copy(
        update={"eval": settings.eval.model_copy(update={"samples_per_prompt": FINAL_EVAL_SAMPLES})}
    )
    prompts = eval_prompts(engine=rt.engine, settings=settings, n=settings.eval.n_prompts)
    return compare(
        settings=settings,
        a=Policy(version=a["policy"]["version"], path=a["policy"]["path"]),
        b=Policy(version=b["policy"]["version"], path=b["policy"]["path"]),
        prompts=prompts,
        judge=gold_judge(settings),
    )


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main(quick: bool = False, seeds: list[int] | None = None) -> None:
    os.environ.setdefault("PREFLOOP_ADMIN_PASSWORD", "bench-gold-" + os.urandom(8).hex())
    from benchmarks.bench_training import demo_policy

    seeds = seeds or ([0] if quick else [0, 1, 2])
    cache = Path(os.environ.get("PREFLOOP_TEST_CACHE") or tempfile.gettempdir())
    policy = demo_policy(cache)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-gold-") as tmp:
        for seed in seeds:
            arms = {}
            for name, gold_filter in ARMS.items():
                arms[name] = run_arm(Path(tmp), policy, name, gold_filter, seed)
                shown = {k: v for k, v in arms[name].items() if k != "rt"}
                print(f"  seed {seed} {name}: {shown}", flush=True)
            versus = head_to_head_arms(arms["gold-filtered"], arms["all labels"])
            print(f"  seed {seed} gold-filtered vs all labels: {versus}", flush=True)
            runs.append({"seed": seed, "arms": arms, "versus": versus})
            for arm in arms.values():
                arm["rt"].engine.dispose()

    print(f"\ngold benchmark, {len(seeds)} seed(s), {ITERATIONS} iterations, sim-3 careless 0.5")
    flags = [arm["flagged_at"] for run in runs for arm in run["arms"].values()]
    careless = [f["sim-3"] for f in flags]
    careful = [f[name] for f in flags for name in ("sim-1", "sim-2")]
    print(
        f"sim-3 flagged at gold label: {careless} (target <= 20); sim-1, sim-2 flagged: "
        f"{sum(x is not None for x in careful)} of {len(careful)} runs (target 0)"
    )
    for name in ARMS:
        wins = [run["arms"][name]["win_vs_pi0"] for run in runs]
        print(f"{name:<14} win-rate vs pi_0: {_mean_spread(wins)}")
    versus = [run["versus"]["win_rate"] for run in runs]
    print(
        f"gold-filtered vs all labels, head to head by the judge: {_mean_spread(versus)} "
        "(target >= 0.55)"
    )
    sys.stdout.flush()


if __name__ == "__main__":  # python -m benchmarks.bench_gold [--quick] [--seed N ...]
    chosen = [int(sys.argv[i + 1]) for i, arg in enumerate(sys.argv) if arg == "--seed"]
    main(quick="--quick" in sys.argv, seeds=chosen or None)
