"""Every CLI command through typer's runner, against a real SQLite data directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import cli
from storage import crud

runner = CliRunner()


def run(*args: str, input: str | None = None, ok: bool = True):
    result = runner.invoke(cli, list(args), input=input)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def data_dir(tmp_path, monkeypatch, database):
    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    run("init", "--data-dir", str(tmp_path))
    return str(tmp_path)


def status(data_dir: str) -> dict:
    return json.loads(run("status", "--json", "--data-dir", data_dir).output)


def test_help_shows_the_texts_as_written():
    """Rich markup read "[policy]" as a style tag and dropped it ("Default:  init_path")."""
    words = " ".join(run("init", "--help").output.split())
    assert "register pi_0 (--policy, or [policy] init_path)" in words
    assert "Default: [policy] init_path." in words


def test_init_creates_one_admin_and_is_safe_twice(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    first = run("init", "--data-dir", str(tmp_path)).output
    assert "created user 'admin' with password" in first
    second = run("init", "--data-dir", str(tmp_path)).output
    assert "exists already" in second and "password" not in second
    assert status(str(tmp_path))["counts"]["user"] == 1


def test_init_takes_the_admin_password_from_the_environment(tmp_path, monkeypatch):
    from sqlmodel import select

    from app.auth import verify_password
    from storage.db import make_engine, sqlite_url, transaction
    from storage.models import User

    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-secret-1")
    out = run("init", "--data-dir", str(tmp_path)).output
    assert "a-long-secret-1" not in out
    with transaction(make_engine(sqlite_url(tmp_path)), readonly=True) as session:
        admin = session.exec(select(User)).one()
    assert verify_password(admin.password_hash, "a-long-secret-1")
    assert not verify_password(admin.password_hash, "wrong-password")


@pytest.mark.parametrize(
    ("change", "state"),
    [
        ({"active": False}, "a disabled admin"),
        ({"role": "annotator"}, "an annotator"),
        ({"role": "annotator", "active": False}, "a disabled annotator"),
    ],
)
def test_init_without_an_active_admin_leaves_a_disabled_admin_alone(
    tmp_path, monkeypatch, change, state
):
    from storage import crud
    from storage.db import make_engine, sqlite_url, transaction

    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "a-long-secret-1")
    run("init", "--data-dir", str(tmp_path))
    engine = make_engine(sqlite_url(tmp_path))
    with transaction(engine) as session:
        admin = crud.get_user_by_name(session=session, name="admin")
        before = admin.model_dump()
        crud.update_user(session=session, user_id=admin.id, **change)
    result = run("init", "--data-dir", str(tmp_path), ok=False)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"the user 'admin' is {state}" in result.output
    assert f"prefloop users add NAME --role admin --data-dir {tmp_path}" in result.output
    assert "a-long-secret-1" not in result.output
    with transaction(engine, readonly=True) as session:
        users = crud.list_users(session=session)
    assert [u.model_dump() for u in users] == [{**before, **change}]
    engine.dispose()

    # the way out the message gives
    run("users", "add", "root", "--role", "admin", "--data-dir", str(tmp_path))
    assert "admin: exists already" in run("init", "--data-dir", str(tmp_path)).output


def test_short_admin_password_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_ADMIN_PASSWORD", "short")
    result = run("init", "--data-dir", str(tmp_path), ok=False)
    assert result.exit_code == 1 and "PREFLOOP_ADMIN_PASSWORD" in result.output


def test_db_upgrade(data_dir):
    assert "current" in run("db", "upgrade", "--data-dir", data_dir).output


@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("users", "list"),
        ("users", "passwd", "admin"),
        ("serve", "--no-scheduler"),
        ("export", "--out", "out.jsonl", "--format", "jsonl"),
    ],
)
def test_commands_need_an_initialised_data_dir(tmp_path, command):
    result = run(*command, "--data-dir", str(tmp_path), ok=False)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"error: {tmp_path} has no prefloop database: run `prefloop init" in result.output
    assert not (tmp_path / "prefloop.db").exists()


def test_commands_refuse_an_older_schema_until_db_upgrade(tmp_path):
    from storage.db import make_engine, sqlite_url, upgrade

    engine = make_engine(sqlite_url(tmp_path))
    upgrade(engine, "0002")
    engine.dispose()
    result = run("users", "list", "--data-dir", str(tmp_path), ok=False)
    assert result.exit_code == 1 and "schema revision 0002" in result.output
    assert "prefloop db upgrade" in result.output
    run("db", "upgrade", "--data-dir", str(tmp_path))
    assert "active" in run("users", "list", "--data-dir", str(tmp_path)).output


def test_users_add_and_list(data_dir):
    out = run("users", "add", "ann", "--data-dir", data_dir).output
    assert "added annotator 'ann'" in out and "password:" in out
    out = run(
        "users",
        "add",
        "bo",
        "--role",
        "admin",
        "--password-stdin",
        "--data-dir",
        data_dir,
        input="correct-horse-battery\n",
    ).output
    assert "password" not in out.replace("--password", "")
    listing = run("users", "list", "--data-dir", data_dir).output
    assert "ann" in listing and "annotator" in listing and "bo" in listing
    duplicate = run("users", "add", "ann", "--data-dir", data_dir, ok=False)
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    bad_role = run("users", "add", "cy", "--role", "boss", "--data-dir", data_dir, ok=False)
    assert bad_role.exit_code != 0


def test_users_passwd(data_dir):
    run("users", "add", "ann", "--data-dir", data_dir)
    out = run(
        "users",
        "passwd",
        "ann",
        "--password-stdin",
        "--data-dir",
        data_dir,
        input="another-password\n",
    ).output
    assert "changed" in out
    assert run("users", "passwd", "nobody", "--data-dir", data_dir, ok=False).exit_code == 1


def test_prompts_import_jsonl_and_csv_skips_duplicates(data_dir, tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "one"}\n{"prompt": "two"}\n\n{"prompt": "one"}\n')
    out = run("prompts", "import", str(jsonl), "--data-dir", data_dir).output
    assert "2 prompts added, 1 duplicates skipped" in out
    csv = tmp_path / "p.csv"
    csv.write_text('question,split\n"two",train\n"three, with a comma",eval\n')
    out = run("prompts", "import", str(csv), "--text-field", "question", "--data-dir", data_dir)
    assert "1 prompts added, 1 duplicates skipped" in out.output
    assert status(data_dir)["counts"]["prompt"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": "ok too"}\n{"prompt": "broken\n', "line 3"),
        ('{"prompt": "ok"}\n{"text": "wrong field"}\n', "line 2, field 'prompt'"),
        ('{"prompt": "ok"}\n{"prompt": 7}\n', "line 2, field 'prompt'"),
        ('{"prompt": "ok"}\n{"prompt": "   "}\n', "empty prompt"),
        ('{"prompt": "ok"}\n{"prompt": "x", "split": "test"}\n', "line 2, field 'split'"),
        ("", "empty file"),
    ],
)
def test_bad_prompt_file_names_the_line_and_changes_nothing(data_dir, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    before = status(data_dir)["counts"]
    result = run("prompts", "import", str(path), "--data-dir", data_dir, ok=False)
    assert result.exit_code == 1
    assert message in result.output and "bad.jsonl" in result.output
    assert status(data_dir)["counts"] == before


def test_prompt_file_in_wrong_encoding(data_dir, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "ok"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    result = run("prompts", "import", str(path), "--data-dir", data_dir, ok=False)
    assert "line 2" in result.output and "UTF-8" in result.output


def test_status_text_and_json(data_dir):
    text = run("status", "--data-dir", data_dir).output
    assert "deployed policy: none" in text and "iteration: none yet" in text
    report = status(data_dir)
    assert report["counts"]["user"] == 1 and report["deployed_policy"] is None


def test_status_json_is_the_same_text_whatever_the_hash_seed(data_dir):
    """Its key order once followed a set's, so it changed from one run to the next: the command
    runs in processes with different PYTHONHASHSEEDs, as separate runs of it would."""
    import os
    import subprocess
    import sys

    from storage.db import transaction
    from storage.runtime import open_runtime
    from tests.factories import make_policy

    rt = open_runtime(data_dir)
    with transaction(rt.engine) as session:
        make_policy(session, version=0)
        crud.start_iteration(session=session, policy_in_id=None, human_quota=5, human_budget=9)
    rt.engine.dispose()
    outputs = [
        subprocess.run(
            [sys.executable, "-m", "app.cli", "status", "--json", "--data-dir", data_dir],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    report = json.loads(outputs[0])
    assert list(report) == [
        "counts",
        "labels",
        "evaluation",
        "gold",
        "deployed_policy",
        "iteration",
    ]
    assert report["evaluation"] == {"queued": 0, "votes": 0}
    assert list(report["iteration"]) == ["k", "state", "error"]
    assert list(report["deployed_policy"]) == ["version", "path", "status"]


def test_invalid_settings_file_is_reported(data_dir):
    from pathlib import Path

    (Path(data_dir) / "prefloop.toml").write_text("[dpo]\nbeta = 0\n")
    result = run("status", "--data-dir", data_dir, ok=False)
    assert result.exit_code == 1 and "dpo.beta" in result.output


def test_environment_value_that_is_not_json_is_reported(data_dir, monkeypatch):
    monkeypatch.setenv("PREFLOOP_GENERATION__TEMPERATURES", "1.0,0.7")
    result = run("status", "--data-dir", data_dir, ok=False)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "error: invalid settings (PREFLOOP_* environment)" in result.output
    assert "PREFLOOP_GENERATION__TEMPERATURES (generation.temperatures): not valid JSON" in (
        result.output
    )


@pytest.mark.slow
def test_init_demo_ends_ready_to_label_and_is_safe_twice(
    tmp_path, monkeypatch, demo_policy_dir, database
):
    import re
    import shutil

    from training import demo_policy

    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    # the cached build stands in for a fresh one: init finds it complete and reuses it
    shutil.copytree(demo_policy_dir, tmp_path / "policies" / "v0")
    out = run("init", "--demo", "support", "--data-dir", str(tmp_path)).output
    assert "500 added" in out and "first round: iteration 0 queued" in out
    assert "seed preferences: 64 added" in out and "proxy v1: fitted on 64 seed preferences" in out
    line = re.search(
        r"demo policy samples: gold mean (\S+) \(q10 (\S+), median (\S+), q90 (\S+)\) "
        r"against (\S+) for the best replies, over (\d+) samples",
        out,
    )
    assert line, out
    mean, q10, median, q90, best = map(float, line.groups()[:5])
    assert 0 <= q10 <= median <= q90 <= 10 and 0 < mean < 0.8 * best <= 10  # room to improve
    assert int(line[6]) == 192
    report = status(str(tmp_path))
    assert report["deployed_policy"]["version"] == 0
    assert report["iteration"]["state"] == "labeling"
    assert report["counts"]["pair"] > 0 and report["counts"]["response"] > 0
    # round 0 pairs by the proxy fitted on the seeds: every pair has its suggestion, and it is
    # an informed one (the gold judge agrees on most; chance is one half)
    suggested = round_zero_suggestions(tmp_path)
    assert len(suggested) == 64
    decided = [
        (p_a > 0.5) == (gold_a > gold_b) for p_a, gold_a, gold_b in suggested if gold_a != gold_b
    ]
    assert sum(decided) / len(decided) >= 0.75, (sum(decided), len(decided))
    # the second run reads the sample quality from the build record instead of sampling again
    monkeypatch.setattr(demo_policy, "sample_gold_distribution", None)
    again = run("init", "--demo", "support", "--data-dir", str(tmp_path)).output
    assert "0 added, 500 present already" in again and "first round" not in again
    assert line[0] in again
    assert status(str(tmp_path))["counts"] == report["counts"]


def round_zero_suggestions(data_dir) -> list[tuple[float, float, float]]:
    """(the proxy's P(a > b), the gold judge's score of a, of b) for each queued pair."""
    from sqlmodel import select

    from labeling.demo_task import gold_judge
    from storage.db import transaction
    from storage.models import Pair, PairStatus, Prompt, Response, Suggestion
    from storage.runtime import open_runtime

    rt = open_runtime(data_dir)
    out = []
    with transaction(rt.engine, readonly=True) as session:
        for pair in session.exec(select(Pair).where(Pair.status == PairStatus.queued)):
            suggestion = session.exec(select(Suggestion).where(Suggestion.pair_id == pair.id)).one()
            prompt = session.get(Prompt, pair.prompt_id).text
            a, b = (session.get(Response, i).text for i in (pair.response_a_id, pair.response_b_id))
            out.append((suggestion.p_a, gold_judge(prompt, a), gold_judge(prompt, b)))
    return out


@pytest.mark.parametrize("module", ["cli_data", "cli_labeling", "cli_serve", "cli_training"])
def test_each_command_module_imports_on_its_own(module):
    """Benchmarks import `app.cli_training` directly; no cycle through the assembled CLI."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"import app.{module}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_package_data_ships_every_non_python_file():
    """A non-editable install has only what pyproject's package-data names (app.server reads
    app/ui's login page, stylesheet and script; alembic the migrations' template)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {
        path
        for package, globs in tool["package-data"].items()
        for pattern in globs
        for path in (root / package.replace(".", "/")).glob(pattern)
    }
    packages = [name.rstrip("*") for name in tool["packages"]["find"]["include"]]
    assets = {
        path
        for package in packages
        for path in (root / package).rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and not path.name.startswith(".")
    }
    assert {"login.html", "style.css", "shortcuts.js", "script.py.mako"} <= {p.name for p in assets}
    assert sorted(str(p.relative_to(root)) for p in assets - shipped) == []
