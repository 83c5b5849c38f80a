"""Labeling on the command line: generate a round, label with simulated annotators, quality,
refit the proxy. Registered in app/cli.py."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from app.cli_common import BothBadBelow, Careless, DataDir, fail, parse_careless, runtime
from storage import crud
from storage.settings import DEFAULT_DATA_DIR


def generate(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    prompts: Annotated[
        int | None,
        typer.Option(
            "--prompts", help="Prompts to sample (default: generation.prompts_per_round)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The round's report as JSON.")] = False,
) -> None:
    """Sample with the deployed policy, score with the proxy, pair, route, and queue the pairs."""
    from labeling.iteration import GenerationError, generate_iteration

    if prompts is not None and prompts < 1:
        raise fail(f"--prompts must be at least 1 (got {prompts})")
    rt = runtime(data_dir)
    try:
        report = generate_iteration(
            engine=rt.engine,
            settings=rt.effective_settings(),
            n_prompts=prompts,
            progress=sys.stderr.isatty(),
        )
    except (GenerationError, crud.Conflict) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report))
        return
    routes = ", ".join(f"{k} {v}" for k, v in report["routes"].items())
    left_out = report["prompts_too_long"], report["prompts_refused_by_template"]
    passed = (
        f" (passed over: {left_out[0]} too long for the policy, {left_out[1]} refused by its "
        "chat template; their ids are in the log)"
        if any(left_out)
        else ""
    )
    typer.echo(
        f"iteration {report['iteration_k']}: {report['prompts']} prompts{passed}, "
        f"{report['responses']} responses ({report['samples_per_second']} samples/s), "
        f"{report['pairs']} pairs by {report['strategy']} with {report['proxy']} ({routes}; "
        f"{report['over_budget']} over the human budget) in {report['seconds']}s"
    )


def label(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Label with simulated annotators (a judge + noise).")
    ] = False,
    annotators: Annotated[int, typer.Option(help="Simulated annotators sim-1..K.", min=1)] = 3,
    noise: Annotated[
        float, typer.Option(help="Bradley-Terry noise scale B (0: always the judge's pick).", min=0)
    ] = 1.0,
    judge: Annotated[
        str | None, typer.Option(help="module:callable (default: proxy.judge).")
    ] = None,
    max_labels: Annotated[int | None, typer.Option(help="Stop after this many labels.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated annotators.")] = 0,
    both_bad_below: BothBadBelow = None,
    careless: Careless = None,
) -> None:
    """Label queued pairs. People label in the browser (`prefloop serve`); --simulate runs
    simulated annotators through the same queue."""
    from labeling.simulate import simulate_labels

    if not simulate:
        raise fail("people label in the browser (`prefloop serve`); use --simulate here")
    shares = parse_careless(careless)
    rt = runtime(data_dir)
    try:
        n = simulate_labels(
            engine=rt.engine,
            settings=rt.effective_settings(),
            annotators=annotators,
            noise=noise,
            judge=judge,
            max_labels=max_labels,
            seed=seed,
            both_bad_below=both_bad_below,
            careless=shares,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{n} labels from {annotators} simulated annotators (noise {noise})")


def quality(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Agreement between annotators (Cohen's kappa, Krippendorff's alpha), with the proxy, the
    proxy's accuracy on audited pairs, and the annotator dashboard: per annotator labels, labels
    per hour, median seconds, the share too fast, kappa with peers, agreement with the proxy,
    gold accuracy and flag, agreement per criterion."""
    from labeling.quality import quality_report

    rt = runtime(data_dir)
    report = quality_report(engine=rt.engine, labeling=rt.effective_settings().labeling)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(_describe_quality(report))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _describe_quality(r: dict[str, Any]) -> str:
    lines = [
        f"human labels: {r['human_labels']} on {r['pairs_labeled']} pairs "
        f"({r['pairs_multi_labeled']} labeled more than once)",
        f"Krippendorff's alpha: {_fmt(r['krippendorff_alpha'])}",
        f"annotators vs proxy: {_fmt(r['human_proxy_agreement'])} (n={r['human_proxy_n']})",
        f"proxy accuracy on audits: {_fmt(r['proxy_audit_accuracy'])} (n={r['proxy_audit_n']})",
        f"proxy calibration error (ECE, 10 bins) on human labels: "
        f"{_fmt(r['proxy_calibration_error'])} (n={r['proxy_calibration_n']})",
    ]
    for k in r["cohen_kappa"]:
        lines.append(f"Cohen's kappa {k['a']} / {k['b']}: {_fmt(k['kappa'])} (n={k['n']})")
    for name, c in r.get("criteria", {}).items():
        lines.append(
            f"criterion {name}: agreement {_fmt(c['agreement'])} (n={c['n']} comparisons on "
            f"{c['pairs_multi_judged']} pairs), alpha {_fmt(c['krippendorff_alpha'])}"
        )
    lines.append(
        f"{'annotator':<20} {'labels':>6} {'per h':>6} {'median s':>8} "
        f"{'<' + format(r['too_fast_seconds'], 'g') + ' s':>7} {'kappa':>6} {'vs proxy':>8} "
        f"{'gold':>11}  criteria"
    )
    for a in r["annotators"]:
        gold = (
            "n/a" if a["gold_accuracy"] is None else f"{a['gold_accuracy']:.2f} ({a['gold_seen']})"
        )
        if a["gold_flagged"]:
            gold += " FLAGGED"
        criteria = ", ".join(f"{k} {_fmt(v)}" for k, v in a["criteria_agreement"].items())
        lines.append(
            f"{a['name']:<20} {a['labels']:>6} {_fmt(a['labels_per_hour']):>6} "
            f"{_fmt(a['median_seconds']):>8} {_fmt(a['too_fast_share']):>7} "
            f"{_fmt(a['peer_kappa']):>6} {_fmt(a['proxy_agreement']):>8} {gold:>11}  {criteria}"
        )
    return "\n".join(lines)


def refit_proxy(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Fit a new version of the embedded proxy on every human label."""
    from labeling.proxy import MIN_LABELS
    from labeling.proxy import refit_proxy as refit

    rt = runtime(data_dir)
    settings = rt.effective_settings()
    version = refit(engine=rt.engine, settings=settings)
    if version is None:
        if settings.proxy.kind != "embedded":
            raise fail(f"proxy.kind = {settings.proxy.kind!r} does not learn from labels")
        raise fail(f"too few labels to fit: at least {MIN_LABELS} a/b/tie labels are needed")
    metrics = version.metrics
    typer.echo(
        f"proxy v{version.version}: {version.n_labels} labels, held-out accuracy "
        f"{_fmt(metrics.get('holdout_accuracy'))}, fitted in {metrics.get('fit_seconds')}s"
    )
