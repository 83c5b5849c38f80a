"""Training: the loop's targets on the demo, measured.

1. prefloop's DPO training (the `python -m training.dpo_job` child: database in, checkpoint and policy row
   out) against a bare TRL `DPOTrainer` script on the same pairs, model and `DPOConfig`: wall-time
   ratio (target <= 1.10), each run as a fresh process, best of `repeats`.
2. `prefloop loop --simulate --iterations 3` through the scheduler: per iteration the gold
   win-rate against pi_0 (target >= 0.70 after 3) and the turnaround, quota reached -> new policy
   deployed and the next pairs queued (target <= 90 s on 2 cores).
3. Online beats offline: a policy trained once by DPO on pairs sampled from pi_0 with the same
   human-label budget, head to head by the gold judge against the online policy (target >= 0.55).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_TRL = """
import json, sys, torch
torch.set_num_threads({threads})
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
spec = json.load(open(sys.argv[1]))
tokenizer = AutoTokenizer.from_pretrained(spec["init"])
trainer = DPOTrainer(
    model=spec["init"],
    ref_model=AutoModelForCausalLM.from_pretrained(spec["ref"]),
    args=DPOConfig(**spec["config"]),
    train_dataset=Dataset.from_list(spec["records"]),
    processing_class=tokenizer,
)
trainer.train()
trainer.save_model(spec["out"])
tokenizer.save_pretrained(spec["out"])
"""


def demo_policy(cache: Path) -> Path:
    from training.demo_policy import build_demo_policy

    path = cache / "demo-policy"
    build_demo_policy(path, progress=False)
    return path


def demo_runtime(data_dir: Path, policy: Path, **flags):
    """A data directory like `prefloop init --demo` leaves it (the policy copied, not rebuilt)."""
    from storage.db import upgrade
    from storage.runtime import open_runtime
    from training.demo_policy import add_demo_prompts, register_demo_policy

    shutil.copytree(policy, data_dir / "policies" / "v0")
    rt = open_runtime(data_dir, **flags)
    upgrade(rt.engine)
    add_demo_prompts(engine=rt.engine)
    register_demo_policy(engine=rt.engine, policy_dir=data_dir / "policies" / "v0")
    return rt


def _labeled_pairs(rt, n: int) -> None:
    """n human-labeled pairs (a random-quality reply against another), decided by the gold judge."""
    from sqlmodel import select

    from labeling.demo_task import gold_judge, reference_reply
    from storage import crud
    from storage.db import transaction
    from storage.models import Choice, IterationState, Label, Pair, Prompt, Response, Split

    with transaction(rt.engine) as session:
        v0 = crud.deployed_policy(session=session)
        it = crud.start_iteration(
            session=session, policy_in_id=v0.id, human_quota=n, human_budget=n
        )
        user = crud.create_user(session=session, name="bench", role="annotator", password_hash=None)
        query = select(Prompt).where(Prompt.split == Split.train).order_by(Prompt.id).limit(n)
        for prompt in session.exec(query):
            a = reference_reply(prompt.text, "random", seed=1)
            b = reference_reply(prompt.text, "random", seed=2)
            ra, rb = Response(prompt_id=prompt.id, text=a), Response(prompt_id=prompt.id, text=b)
            session.add_all([ra, rb])
            session.flush()
            pair = Pair(
                prompt_id=prompt.id, response_a_id=ra.id, response_b_id=rb.id, iteration_id=it.id
            )
            session.add(pair)
            session.flush()
            better_a = gold_judge(prompt.text, a) >= gold_judge(prompt.text, b)
            choice = Choice.a if better_a else Choice.b
            session.add(Label(pair_id=pair.id, user_id=user.id, choice=choice))
        crud.set_iteration_state(session=session, iteration_id=it.id, state=IterationState.labeling)


def bench_dpo_overhead(policy: Path, work: Path, *, n_pairs: int, repeats: int) -> dict:
    from storage.db import transaction
    from storage.preferences import iter_preferences
    from training.dpo import dpo_config_kwargs, preference_records
    from training.iteration import queue_training
    from training.runner import child_env, run_child

    rt = demo_runtime(work / "prefloop", policy)
    _labeled_pairs(rt, n_pairs)
    settings = rt.settings
    with transaction(rt.engine, readonly=True) as session:
        records = preference_records(list(iter_preferences(session=session)), chat=True)
    v0 = str((rt.settings.data_dir / "policies" / "v0").resolve())
    spec = work / "bare.json"
    script = work / "bare_trl.py"
    script.write_text(BARE_TRL.format(threads=settings.dpo.threads))
    prefloop_times, bare_times = [], []
    for i in range(repeats):
        out = work / f"bare-{i}"
        config = dpo_config_kwargs(settings.dpo, out / "trainer")
        spec.write_text(
            json.dumps(
                {"init": v0, "ref": v0, "config": config, "records": records, "out": str(out)}
            )
        )
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(script), str(spec)],
            check=True,
            env=child_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bare_times.append(time.perf_counter() - start)

        job = queue_training(engine=rt.engine, settings=settings, refit_proxy=False, evaluate=False)
        start = time.perf_counter()
        job = run_child(engine=rt.engine, settings=settings, job_id=job.id)
        prefloop_times.append(time.perf_counter() - start)
        if job.status != "succeeded":
            raise RuntimeError(f"prefloop DPO job failed: {job.error}")
        _reopen_iteration(rt)
    rt.engine.dispose()
    return {
        "pairs": len(records),
        "bare_trl_s": round(min(bare_times), 2),
        "prefloop_s": round(min(prefloop_times), 2),
        "ratio": round(min(prefloop_times) / min(bare_times), 3),
    }


def _reopen_iteration(rt) -> None:
    """Back to `labeling` with the same pairs, for the next repeat (a benchmark-only shortcut)."""
    from storage import crud
    from storage.db import transaction
    from storage.models import IterationState

    with transaction(rt.engine) as session:
        iteration = crud.current_iteration(session=session)
        iteration.state = IterationState.labeling
        session.add(iteration)


def bench_loop(policy: Path, work: Path, *, iterations: int, flags: dict) -> dict:
    from app.cli_training import run_loop
    from labeling.judges import DEFAULT_JUDGE

    rt = demo_runtime(work / "online", policy, eval={"judge": DEFAULT_JUDGE}, **flags)
    reports = []
    for report in run_loop(rt, iterations=iterations, judge=DEFAULT_JUDGE):
        print(json.dumps(report), flush=True)
        reports.append(report)
    from storage import crud
    from storage.db import transaction

    with transaction(rt.engine, readonly=True) as session:
        deployed = crud.deployed_policy(session=session)
    rt.engine.dispose()
    return {"reports": reports, "final": deployed, "settings": rt.settings}


def bench_offline(policy: Path, work: Path, *, human_labels: int, flags: dict):
    """One round on pi_0's samples with the online run's whole human-label budget."""
    from app.cli_training import run_loop
    from labeling.judges import DEFAULT_JUDGE
    from storage import crud
    from storage.db import transaction

    loop = dict(flags.get("loop", {}), human_quota=human_labels)
    generation = dict(
        flags.get("generation", {}),
        prompts_per_round=human_labels * flags.get("pairing", {}).get("pairs_per_prompt", 1),
    )
    routing = dict(flags.get("routing", {}), human_budget=human_labels)
    rt = demo_runtime(
        work / "offline",
        policy,
        **{**flags, "loop": loop, "generation": generation, "routing": routing},
        eval={"judge": DEFAULT_JUDGE},
    )
    (report,) = list(run_loop(rt, iterations=1, judge=DEFAULT_JUDGE))
    with transaction(rt.engine, readonly=True) as session:
        policy_row = crud.get_policy(session=session, version=report["candidate_version"])
    rt.engine.dispose()
    return report, policy_row


def main(quick: bool = False) -> None:
    from labeling.judges import DEFAULT_JUDGE, load_judge
    from training.evaluate import compare, eval_prompts

    cache = Path(os.environ.get("PREFLOOP_TEST_CACHE") or tempfile.gettempdir())
    policy = demo_policy(cache)
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp:
        work = Path(tmp)
        overhead = bench_dpo_overhead(
            policy, work / "dpo", n_pairs=32 if quick else 128, repeats=1 if quick else 2
        )
        print(
            f"DPO round, {overhead['pairs']} pairs: prefloop {overhead['prefloop_s']}s, bare TRL "
            f"{overhead['bare_trl_s']}s, ratio {overhead['ratio']} (target <= 1.10)",
            flush=True,
        )
        if quick:
            return
        flags: dict = {}
        online = bench_loop(policy, work, iterations=3, flags=flags)
        reports = online["reports"]
        turnaround = max(r["turnaround_seconds"] for r in reports)
        final_vs_pi0 = reports[-1]["gold_win_rate_vs_pi0"]
        human = sum(r["human_labels"] for r in reports)
        print(
            f"online, 3 iterations: gold win-rate of the last candidate vs pi_0 {final_vs_pi0} "
            f"(target >= 0.70); turnaround max {turnaround}s (target <= 90); "
            f"{human} human labels",
            flush=True,
        )
        _, offline_policy = bench_offline(policy, work, human_labels=human, flags=flags)
        settings = online["settings"]
        prompts = eval_prompts(
            engine=_engine(settings), settings=settings, n=settings.eval.n_prompts
        )
        head = compare(
            settings=settings,
            a=online["final"],
            b=offline_policy,
            prompts=prompts,
            judge=load_judge(DEFAULT_JUDGE),
        )
        print(
            f"online (v{online['final'].version}) vs offline, same {human} human labels: "
            f"gold win-rate {head['win_rate']} (target >= 0.55); mean gold "
            f"{head['mean_a']} vs {head['mean_b']}",
            flush=True,
        )


def _engine(settings):
    from storage.db import make_engine

    return make_engine(settings.resolved_database_url)
