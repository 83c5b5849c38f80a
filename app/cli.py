"""The `prefloop` command line. Each command parses its flags, opens the runtime, calls services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from app import (
    cli_data,
    cli_eval,
    cli_gold,
    cli_guidelines,
    cli_labeling,
    cli_review,
    cli_serve,
    cli_training,
    cli_worker,
)
from app.cli_common import DataDir, data_dir_flag, fail, runtime
from storage import crud, evaluation, gold
from storage.db import transaction, upgrade
from storage.models import Role
from storage.runtime import Runtime
from storage.settings import DEFAULT_DATA_DIR

cli = typer.Typer(
    name="prefloop",
    help="Human-in-the-loop annotation and training for online iterative RLHF.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help as written: rich markup ate "[policy]" and markdown "<data-dir>" from the texts.
    rich_markup_mode=None,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
users_cli = typer.Typer(help="Annotators and admins.", no_args_is_help=True)
prompts_cli = typer.Typer(help="Prompts to sample responses for.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(users_cli, name="users")
cli.add_typer(prompts_cli, name="prompts")
cli.add_typer(cli_worker.worker_cli, name="worker")
cli.add_typer(cli_gold.gold_cli, name="gold")
cli.add_typer(cli_review.review_cli, name="review")
cli.add_typer(cli_guidelines.guidelines_cli, name="guidelines")


DEMOS = ("chat", "support")


@cli.command()
def init(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    demo: Annotated[
        str | None,
        typer.Option(
            "--demo",
            help="Set up a demo: chat (SmolLM2-135M-Instruct on general instructions; "
            "`--demo` alone) or support (a tiny model on support replies, for fast runs).",
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="pi_0: a Hugging Face causal LM directory, a hub id in the local cache, or a "
            ".gguf file (converted into <data-dir>/policies/v0). Default: [policy] init_path.",
        ),
    ] = None,
) -> None:
    """Create or upgrade the database and the first admin; register pi_0 (--policy, or [policy]
    init_path); with --demo, set up a demo and queue its first round.

    Safe to run again: nothing that exists is created twice."""
    if demo is not None and demo not in DEMOS:
        raise fail(f"--demo {demo!r}: expected one of {', '.join(DEMOS)}")
    if demo is not None and policy is not None:
        raise fail("--demo brings its own pi_0: give --demo or --policy, not both")
    data_dir.mkdir(parents=True, exist_ok=True)
    if demo is not None:
        _record_demo(data_dir, demo)
    rt = runtime(data_dir, needs_schema=False)
    given = policy or (rt.settings.policy.init_path if demo is None else None)
    info = _check_policy(rt, given) if given else None  # before anything is written
    upgrade(rt.engine)
    typer.echo(f"database ready: {rt.settings.resolved_database_url.split('@')[-1]}")
    _ensure_admin(rt)
    if demo == "support":
        _init_demo(rt)
    elif demo == "chat":
        _init_chat_demo(rt)
    elif info is not None:
        _register_policy(rt, info, given)


def _record_demo(data_dir: Path, demo: str) -> None:
    """Say in `<data-dir>/prefloop.toml` which demo the directory holds (`demo = "chat"`), so
    every later command (and the training child) takes that demo's defaults."""
    from storage.settings import SETTINGS_FILE, SettingsError, _read_toml

    path = data_dir / SETTINGS_FILE
    try:
        current = _read_toml(path)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    recorded = current.get("demo")
    if recorded == demo:
        return
    if recorded is not None:
        raise fail(
            f"{path} says demo = {recorded!r}: this data directory holds the {recorded} demo. "
            f"Use another --data-dir for the {demo} demo"
        )
    if demo == "chat" and _has_policy(data_dir):
        raise fail(
            f"{data_dir} already has a policy (the support demo's, or one of yours): the chat "
            "demo needs a data directory of its own (--data-dir); `prefloop init --demo "
            "support` keeps using this one as the support demo"
        )
    line = f'demo = "{demo}"  # written by `prefloop init --demo {demo}`\n'
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    # A top-level key must come before the first [table]: at the top it always does.
    path.write_text(line + existing, encoding="utf-8")


def _has_policy(data_dir: Path) -> bool:
    from storage.db import current_revision

    rt = runtime(data_dir, needs_schema=False)
    if current_revision(rt.engine) is None:
        return False  # no database yet (checking creates no SQLite file)
    upgrade(rt.engine)
    with transaction(rt.engine, readonly=True) as session:
        return bool(crud.list_policies(session=session))


def _check_policy(rt: Runtime, spec: str):
    """The user's pi_0, checked (a GGUF file converted into <data-dir>/policies/v0)."""
    from training.base_model import PolicyError, prepare_policy

    try:
        return prepare_policy(spec, rt.settings.demo_policy_dir)
    except PolicyError as exc:
        raise fail(str(exc)) from None


def _register_policy(rt: Runtime, info, spec: str) -> None:
    """Register the user's checked pi_0 as v0 and deploy it."""
    from training.base_model import PolicyError, register_base_policy

    try:
        registered = register_base_policy(
            engine=rt.engine,
            path=info.path,
            config={"source": "user", "given": str(spec), "check": info.describe()},
        )
    except PolicyError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"policy: {info.path} ({info.describe()})")
    typer.echo("policy v0: " + ("registered and deployed" if registered else "registered already"))


def _ensure_admin(rt: Runtime) -> None:
    from app.auth import generate_password, hash_password

    with transaction(rt.engine) as session:
        if crud.count_admins(session=session) > 0:
            typer.echo("admin: exists already (unchanged)")
            return
        existing = crud.get_user_by_name(session=session, name="admin")
        if existing is not None:
            # Disabled or demoted on purpose, maybe because its password leaked: not undone here.
            state = ("a disabled " if not existing.active else "an ") + str(existing.role)
            raise fail(
                f"there is no active admin, and the user 'admin' is {state}; init leaves it so. "
                "Make an admin: `prefloop users add NAME --role admin"
                f"{data_dir_flag(rt.settings.data_dir)}`"
            )
        given = os.environ.get("PREFLOOP_ADMIN_PASSWORD")
        password = given or generate_password()
        try:
            password_hash = hash_password(password)
        except ValueError as exc:
            raise fail(f"PREFLOOP_ADMIN_PASSWORD: {exc}") from None
        crud.create_user(
            session=session, name="admin", role=Role.admin, password_hash=password_hash
        )
    if given:
        typer.echo("admin: created user 'admin' with the password from PREFLOOP_ADMIN_PASSWORD")
    else:
        typer.secho(
            f"admin: created user 'admin' with password {password}\n"
            "       (shown once; keep it, or set a new one with `prefloop users passwd admin`)",
            fg=typer.colors.YELLOW,
        )


def _init_demo(rt: Runtime) -> None:
    from labeling.demo_task import seed_preferences
    from storage.preferences import SeedPreferenceIn
    from training.demo_policy import (
        add_demo_prompts,
        build_demo_policy,
        demo_sample_quality,
        register_demo_policy,
    )

    added, skipped = add_demo_prompts(engine=rt.engine)
    typer.echo(f"demo prompts: {added} added, {skipped} present already")

    policy_dir = rt.settings.demo_policy_dir
    typer.echo(f"demo policy: {policy_dir}")
    metrics = build_demo_policy(policy_dir, progress=sys.stderr.isatty())
    typer.echo(
        f"demo policy: loss {metrics['initial_loss']:.2f} -> {metrics['final_loss']:.2f}, "
        f"{metrics['n_params'] / 1e6:.1f}M parameters, {metrics['steps']} steps in "
        f"{metrics['seconds']:.0f}s"
    )
    if metrics.get("stopped_early"):
        typer.echo("demo policy: this machine hit the build's time ceiling; pi_0 is undertrained")
    samples = demo_sample_quality(policy_dir)
    typer.echo(
        f"demo policy samples: gold mean {samples['mean']:.1f} (q10 {samples['q10']:.1f}, "
        f"median {samples['q50']:.1f}, q90 {samples['q90']:.1f}) against "
        f"{samples['best_mean']:.1f} for the best replies, over {samples['n']} samples"
    )
    registered = register_demo_policy(engine=rt.engine, policy_dir=policy_dir, build=metrics)
    typer.echo("policy v0: " + ("registered and deployed" if registered else "registered already"))
    _seed_the_proxy(
        rt,
        [
            SeedPreferenceIn(
                prompt=crud.PromptIn(text=prompt, source="demo"), chosen=chosen, rejected=rejected
            )
            for prompt, chosen, rejected in seed_preferences()
        ],
    )
    with transaction(rt.engine, readonly=True) as session:
        first_round_due = crud.current_iteration(session=session) is None
    if first_round_due:
        _generate_first_round(rt)


def _init_chat_demo(rt: Runtime) -> None:
    """The chat demo: shipped instructions, SmolLM2-135M-Instruct converted as pi_0, the seed
    preferences, the proxy fitted on them, and the first round queued."""
    from labeling.chat_task import SEED_PREFERENCES, chat_prompts
    from labeling.importing import read_preferences
    from storage.models import Split
    from training.base_model import PolicyError, convert_gguf, smollm2_gguf

    records = [
        crud.PromptIn(text=text, source=f"chat-demo:{kind}", split=Split(split))
        for text, kind, split in chat_prompts()
    ]
    with transaction(rt.engine) as session:
        added, skipped = crud.add_prompts(session=session, prompts=records)
    typer.echo(f"chat prompts: {added} added, {skipped} present already")

    policy_dir = rt.settings.demo_policy_dir
    try:
        converted = convert_gguf(smollm2_gguf(), policy_dir)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"chat policy: SmolLM2-135M-Instruct, {converted['n_params'] / 1e6:.1f}M parameters, "
        f"converted from GGUF into {policy_dir} in {converted['seconds']:.0f}s (once)"
    )
    from training.base_model import register_base_policy

    registered = register_base_policy(
        engine=rt.engine,
        path=policy_dir,
        config={"source": "demo", "demo": "chat", "converted": converted},
    )
    typer.echo("policy v0: " + ("registered and deployed" if registered else "registered already"))

    _seed_the_proxy(rt, read_preferences(SEED_PREFERENCES))
    with transaction(rt.engine, readonly=True) as session:
        first_round_due = crud.current_iteration(session=session) is None
    if first_round_due:
        _generate_first_round(rt)


def _seed_the_proxy(rt: Runtime, seeds) -> None:
    """Store a demo's seed preferences and fit the proxy's first version on them (once), so
    that round 0 pairs by the proxy's scores and every pair carries its suggestion."""
    from labeling.proxy import latest_version, refit_proxy
    from storage.preferences import add_seed_preferences

    with transaction(rt.engine) as session:
        added, skipped = add_seed_preferences(session=session, items=seeds)
    typer.echo(f"seed preferences: {added} added, {skipped} present already")
    if latest_version(engine=rt.engine) is None:
        version = refit_proxy(engine=rt.engine, settings=rt.settings)
        if version is not None:
            typer.echo(f"proxy v{version.version}: fitted on {version.n_labels} seed preferences")


def _generate_first_round(rt: Runtime) -> None:
    """Queue the demo's first pairs, so that `make run` ends ready to label."""
    from labeling.iteration import generate_iteration

    settings = rt.effective_settings()
    typer.echo("first round: sampling with the demo policy ...")
    report = generate_iteration(
        engine=rt.engine,
        settings=settings,
        n_prompts=settings.generation.first_round_prompts,
        progress=sys.stderr.isatty(),
    )
    routes = ", ".join(f"{route} {n}" for route, n in report["routes"].items())
    typer.echo(f"first round: iteration {report['iteration_k']} queued ({routes})")


@db_cli.command("upgrade")
def db_upgrade(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Create the schema or upgrade it in place to this release's."""
    rt = runtime(data_dir, needs_schema=False)
    upgrade(rt.engine)
    typer.echo("database schema is current")


def new_password(from_stdin: bool) -> tuple[str, str]:
    """A password read from standard input or generated, and its hash; too short fails."""
    from app.auth import generate_password, hash_password

    password = sys.stdin.readline().rstrip("\r\n") if from_stdin else generate_password()
    try:
        return password, hash_password(password)
    except ValueError as exc:
        raise fail(str(exc)) from None


@users_cli.command("add")
def users_add(
    name: str,
    role: Annotated[Role, typer.Option(help="annotator or admin")] = Role.annotator,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Add a user. Without --password-stdin a password is generated and shown once."""
    password, password_hash = new_password(password_stdin)
    rt = runtime(data_dir)
    try:
        with transaction(rt.engine) as session:
            user = crud.create_user(
                session=session, name=name, role=role, password_hash=password_hash
            )
            crud.record_audit(
                session=session,
                user_id=None,
                action="user.add",
                detail={"name": name, "role": role},
            )
    except (crud.Conflict, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"added {user.role} {user.name!r} (id {user.id})")
    if not password_stdin:
        typer.echo(f"password: {password}  (shown once)")


@users_cli.command("list")
def users_list(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """List users with their role and whether they are active."""
    rt = runtime(data_dir)
    with transaction(rt.engine, readonly=True) as session:
        users = crud.list_users(session=session)
    typer.echo(f"{'id':>4}  {'name':<24} {'role':<10} active")
    for user in users:
        typer.echo(
            f"{user.id:>4}  {user.name:<24} {user.role:<10} {'yes' if user.active else 'no'}"
        )


@users_cli.command("passwd")
def users_passwd(
    name: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Set a new password (generated and shown once unless read from standard input)."""
    password, password_hash = new_password(password_stdin)
    rt = runtime(data_dir)
    with transaction(rt.engine) as session:
        user = crud.get_user_by_name(session=session, name=name)
        if user is None:
            raise fail(f"no user {name!r}")
        crud.update_user(session=session, user_id=user.id, password_hash=password_hash)
        crud.record_audit(
            session=session, user_id=None, action="user.passwd", detail={"name": name}
        )
    typer.echo(f"password of {name!r} changed")
    if not password_stdin:
        typer.echo(f"password: {password}  (shown once)")


@cli.command()
def status(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Counts per table, the deployed policy, and the current iteration."""
    rt = runtime(data_dir)
    report = collect_status(rt)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    policy, iteration = report["deployed_policy"], report["iteration"]
    typer.echo(f"data directory: {rt.settings.data_dir.resolve()}")
    if policy:
        typer.echo(f"deployed policy: v{policy['version']} ({policy['path']})")
    else:
        typer.echo("deployed policy: none (run `prefloop init --demo` or `prefloop deploy`)")
    if iteration:
        typer.echo(f"iteration: {iteration['k']} ({iteration['state']})")
    else:
        typer.echo("iteration: none yet")
    typer.echo("rows: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()))
    ev = report["evaluation"]
    typer.echo(f"evaluation pairs: {ev['queued']} queued, {ev['votes']} votes")
    typer.echo(f"gold pairs: {report['gold']['pairs']}, {report['gold']['labels']} gold labels")


def collect_status(rt: Runtime) -> dict:
    """The status report, its keys in a fixed order. (Not `model_dump(include={...})`: on a row
    loaded from the database that follows the set's order, which changes from run to run.)"""
    with transaction(rt.engine, readonly=True) as session:
        policy = crud.deployed_policy(session=session)
        iteration = crud.current_iteration(session=session)
        return {
            "counts": crud.table_counts(session=session),
            "labels": dict(sorted(crud.label_counts(session=session).items())),
            "evaluation": evaluation.eval_queue_counts(session=session),
            "gold": gold.gold_counts(session=session),
            "deployed_policy": {
                "version": policy.version,
                "path": policy.path,
                "status": str(policy.status),
            }
            if policy
            else None,
            "iteration": {"k": iteration.k, "state": str(iteration.state), "error": iteration.error}
            if iteration
            else None,
        }


# Commands of the other areas, each in its own module (imported last: they reuse DataDir above).

prompts_cli.command("import")(cli_data.prompts_import)
prompts_cli.command("list")(cli_data.prompts_list)
prompts_cli.command("deactivate")(cli_data.prompts_deactivate)
prompts_cli.command("activate")(cli_data.prompts_activate)
users_cli.command("token")(cli_data.users_token)
cli.add_typer(cli_data.prefs_cli, name="prefs")
cli.command("export")(cli_data.export)
cli.command("serve")(cli_serve.serve)


cli.command("train")(cli_training.train)
cli.command("deploy")(cli_training.deploy)
cli.command("rollback")(cli_training.rollback)
cli.command("loop")(cli_training.loop)


cli.command("generate")(cli_labeling.generate)
cli.command("label")(cli_labeling.label)
cli.command("quality")(cli_labeling.quality)
cli.command("refit-proxy")(cli_labeling.refit_proxy)


cli.command("eval-pairs")(cli_eval.eval_pairs)
cli.command("leaderboard")(cli_eval.leaderboard)
cli.command("eval-export")(cli_eval.eval_export)


def _demo_alone_means_chat(argv: list[str]) -> list[str]:
    """`prefloop init --demo` with no value is `--demo chat` (click has no optional values)."""
    if not argv or argv[0] != "init":
        return argv
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--demo" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "chat")
            break
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(args=_demo_alone_means_chat(sys.argv[1:]))


if __name__ == "__main__":
    main()
