"""Admin view, plots: labels per hour, agreement, win-rate per policy version, DPO loss and
margins per iteration."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from app.ui.common import DIRECT
from app.ui.guard import AppContext, require_user
from storage import crud, reports
from storage.db import transaction
from storage.models import Role


def _win_rates(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Every `win_rate` number in a policy's metrics, named by where it sits
    (e.g. "vs v0 / gold_judge")."""
    found = []
    for key, value in metrics.items():
        name = f"{prefix} / {key}" if prefix else str(key)
        if key == "win_rate" and isinstance(value, int | float):
            found.append((prefix or "win_rate", float(value)))
        elif isinstance(value, dict):
            found.extend(_win_rates(value, name))
    return found


def plot_frames(ctx: AppContext) -> dict[str, pd.DataFrame]:
    with transaction(ctx.rt.engine, readonly=True) as session:
        per_hour = reports.labels_per_hour(session=session)
        agreement = reports.agreement_per_iteration(session=session)
        k_of = {it.id: it.k for it in crud.list_iterations(session=session)}
        policies = crud.list_policies(session=session)
    rates, training = [], []
    for policy in policies:
        for series, value in _win_rates(policy.metrics or {}):
            rates.append({"version": policy.version, "series": series, "win_rate": value})
        train = (policy.metrics or {}).get("train") or {}
        heldout = ((policy.metrics or {}).get("eval") or {}).get("implicit_reward") or {}
        for source, key, label in (
            (train, "final_loss", "DPO loss"),
            (train, "reward_margin", "reward margin"),
            (heldout, "margin", "held-out reward margin"),
            (heldout, "accuracy", "held-out reward accuracy"),
        ):
            if isinstance(source.get(key), int | float):
                training.append({"version": policy.version, "metric": label, "value": source[key]})
    agree = [
        {
            "iteration": k_of.get(row["iteration_id"], -1),
            "kind": row["kind"],
            "agreement": row["agreement"],
        }
        for row in agreement
    ]
    return {
        "per_hour": pd.DataFrame(per_hour, columns=["hour", "source", "labels"]),
        "agreement": pd.DataFrame(agree, columns=["iteration", "kind", "agreement"]),
        "win_rate": pd.DataFrame(rates, columns=["version", "series", "win_rate"]),
        "training": pd.DataFrame(training, columns=["version", "metric", "value"]),
    }


def build_plots(ctx: AppContext):
    """Components and events of the plots tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        frames = plot_frames(ctx)
        return (frames["per_hour"], frames["agreement"], frames["win_rate"], frames["training"])

    empty = plot_frames_empty()
    with gr.Row():
        per_hour = gr.BarPlot(
            empty["per_hour"],
            x="hour",
            y="labels",
            color="source",
            title="Labels per hour",
            x_title="hour (UTC)",
            elem_id="pf-plot-hour",
        )
        agreement = gr.BarPlot(
            empty["agreement"],
            x="iteration",
            y="agreement",
            color="kind",
            title="Agreement (human-human, human-proxy)",
            y_lim=[0, 1],
            elem_id="pf-plot-agree",
        )
    with gr.Row():
        win_rate = gr.LinePlot(
            empty["win_rate"],
            x="version",
            y="win_rate",
            color="series",
            title="Held-out win-rate per policy version",
            y_lim=[0, 1],
            elem_id="pf-plot-win",
        )
        training = gr.LinePlot(
            empty["training"],
            x="version",
            y="value",
            color="metric",
            title="DPO loss and reward margin per iteration",
            elem_id="pf-plot-dpo",
        )
    refresh_button = gr.Button("Refresh plots", size="sm", elem_id="pf-plots-refresh")
    outputs = [per_hour, agreement, win_rate, training]
    refresh_button.click(refresh, None, outputs, api_name="plots", **DIRECT)
    return refresh, outputs


def plot_frames_empty() -> dict[str, pd.DataFrame]:
    return {
        "per_hour": pd.DataFrame([], columns=["hour", "source", "labels"]),
        "agreement": pd.DataFrame([], columns=["iteration", "kind", "agreement"]),
        "win_rate": pd.DataFrame([], columns=["version", "series", "win_rate"]),
        "training": pd.DataFrame([], columns=["version", "metric", "value"]),
    }
