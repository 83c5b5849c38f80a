"""Admin view, the loop: iterations as a timeline with jobs and progress, and the actions
(generate the next iteration, train now, deploy or roll back a version, pause or resume labeling)."""

from __future__ import annotations

from datetime import datetime

import gradio as gr

from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud, reports
from storage.db import transaction
from storage.models import Role

REFRESH_SECONDS = 3.0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%m-%d %H:%M:%S") if moment else ""


def _bar(fraction: float) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return f'<span class="pf-bar" title="{pct:.0f}%"><span style="width:{pct:.0f}%"></span></span>'


def _passed_over(counts: dict) -> str:
    """A round's prompts it could not sample, for its row (their ids are in its log)."""
    reasons = [
        (counts.get("prompts_too_long", 0), "too long for the policy"),
        (counts.get("prompts_refused_by_template", 0), "refused by its chat template"),
    ]
    passed = [f"{n} {why}" for n, why in reasons if n]
    if not passed:
        return ""
    text = f"{counts.get('prompts', 0)} prompts sampled; passed over: {', '.join(passed)}"
    return f'<div class="pf-warning">{escape(text)} (their ids are in the round&#x27;s log)</div>'


def timeline_html(ctx: AppContext) -> str:
    """The iterations (newest first) with their human-label progress, then recent jobs."""
    with transaction(ctx.rt.engine, readonly=True) as session:
        iterations = list(reversed(crud.list_iterations(session=session)))
        human = reports.human_labels_per_iteration(session=session)
        jobs = reports.recent_jobs(session=session, limit=10)
        policy = crud.deployed_policy(session=session)
        paused = ctx.rt.effective_settings(session).labeling.paused
    head = (
        f'<p id="pf-loop-status">Deployed policy: <b>{f"v{policy.version}" if policy else "none"}'
        f"</b> · Labeling: <b>{'paused' if paused else 'open'}</b></p>"
    )
    if not iterations:
        rows = '<tr><td colspan="6">No iteration yet: generate the first one.</td></tr>'
    else:
        rows = ""
        for it in iterations:
            done = human.get(it.id, 0)
            quota = max(it.human_quota, 1)
            stamps = " → ".join(
                f"{name} {_when(t)}"
                for name, t in [
                    ("created", it.created_at),
                    ("labeling", it.labeling_at),
                    ("training", it.training_at),
                    ("evaluating", it.evaluating_at),
                    ("finished", it.finished_at),
                ]
                if t
            )
            error = f'<div class="pf-error">{escape(it.error)}</div>' if it.error else ""
            error += _passed_over(it.metrics.get("generation", {}))
            rows += (
                f'<tr data-k="{it.k}"><td>{it.k}</td>'
                f'<td class="pf-state pf-state-{escape(it.state)}">{escape(it.state)}</td>'
                f"<td>{_bar(done / quota)} {done}/{it.human_quota} human labels</td>"
                f"<td>{escape(stamps)}{error}</td></tr>"
            )
    job_rows = "".join(
        f"<tr><td>{j.id}</td><td>{escape(j.kind)}</td><td>{escape(j.status)}</td>"
        f"<td>{escape((j.result or {}).get('phase', ''))}</td>"
        f"<td>{_bar(j.progress)} {j.progress:.0%}</td><td>{_when(j.started_at)}</td>"
        f'<td class="pf-error">{escape(j.error or "")}</td></tr>'
        for j in jobs
    )
    return (
        head
        + '<table class="pf-timeline" id="pf-timeline"><tr><th>k</th><th>state</th>'
        + f"<th>progress</th><th>timeline</th></tr>{rows}</table>"
        + "<h4>Jobs</h4>"
        + '<table class="pf-timeline" id="pf-jobs"><tr><th>id</th><th>kind</th><th>status</th>'
        + f"<th>phase</th><th>progress</th><th>started</th><th>error</th></tr>{job_rows}</table>"
    )


def policy_choices(ctx: AppContext) -> list[str]:
    with transaction(ctx.rt.engine, readonly=True) as session:
        return [f"v{p.version} ({p.status})" for p in crud.list_policies(session=session)]


def parse_version(choice: str | None) -> int:
    if not choice or not choice.startswith("v"):
        raise ValueError("pick a policy version first")
    return int(choice[1:].split()[0])


def build_loop(ctx: AppContext):
    """Components and events of the loop tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return timeline_html(ctx), gr.update(choices=policy_choices(ctx))

    def tick(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return timeline_html(ctx)

    def act(action: str, version_choice: str | None, force: bool, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        try:
            message = _run_action(ctx, admin.id, action, version_choice, force)
            note = f'<span class="pf-ok">{escape(message)}</span>'
        except (crud.Conflict, crud.NotFound, ValueError, RuntimeError) as exc:
            note = f'<span class="pf-error" role="alert">{escape(exc)}</span>'
        return note, timeline_html(ctx), gr.update(choices=policy_choices(ctx))

    timeline = html(elem_id="pf-loop")
    with gr.Row():
        generate = gr.Button("Generate next iteration", elem_id="pf-generate", variant="primary")
        train = gr.Button("Train now", elem_id="pf-train")
        pause = gr.Button("Pause labeling", elem_id="pf-pause")
        resume = gr.Button("Resume labeling", elem_id="pf-resume")
    with gr.Row():
        version = gr.Dropdown([], label="Policy version", elem_id="pf-version", scale=2)
        force = gr.Checkbox(False, label="Deploy even if the gate rejected it")
        deploy = gr.Button("Deploy", elem_id="pf-deploy")
        rollback = gr.Button("Roll back to", elem_id="pf-rollback")
    result = html(elem_id="pf-loop-result")
    outputs = [result, timeline, version]
    for button, action in [
        (generate, "generate"),
        (train, "train"),
        (pause, "pause"),
        (resume, "resume"),
        (deploy, "deploy"),
        (rollback, "rollback"),
    ]:
        button.click(
            _bind(act, action), [version, force], outputs, api_name=f"loop_{action}", **DIRECT
        )
    gr.Timer(REFRESH_SECONDS).tick(
        tick, None, [timeline], api_name="loop_tick", show_progress="hidden", **DIRECT
    )
    return refresh, [timeline, version]


def _bind(act, action: str):
    def handler(version_choice: str | None, force: bool, request: gr.Request):
        return act(action, version_choice, force, request)

    return handler


def _run_action(ctx: AppContext, user_id: int, action: str, choice: str | None, force: bool) -> str:
    """One admin action; the caller has checked the role."""
    if action in ("pause", "resume"):
        paused = action == "pause"
        with transaction(ctx.rt.engine) as session:
            crud.set_overrides(session=session, values={"labeling.paused": paused}, user_id=user_id)
            crud.record_audit(session=session, user_id=user_id, action=f"labeling.{action}")
        return "Labeling paused." if paused else "Labeling resumed."
    if action == "generate":
        from app.scheduler import request_generation

        request_generation(ctx.rt, user_id)
        return "Generation of the next iteration requested."
    if action == "train":
        from app.scheduler import request_training

        request_training(ctx.rt, user_id)
        return "Training requested."
    if action == "deploy":
        from training.deploy import deploy

        version = parse_version(choice)
        deploy(engine=ctx.rt.engine, version=version, user_id=user_id, force=force)
        return f"Policy v{version} deployed."
    if action == "rollback":
        from training.deploy import rollback

        version = parse_version(choice)
        rollback(engine=ctx.rt.engine, to_version=version, user_id=user_id)
        return f"Rolled back to policy v{version}."
    raise ValueError(f"unknown action {action!r}")
