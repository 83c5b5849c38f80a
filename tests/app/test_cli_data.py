"""prefloop prompts import / prefs import / export / users token, against a real data directory."""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest

from app.auth import hash_token
from storage.db import transaction
from storage.models import Split
from storage.runtime import open_runtime
from tests.app.test_cli import run, status
from tests.conftest import fresh_postgres_database
from tests.labeling.test_importing import CHAT, ODD, assistant, write_jsonl, write_parquet


@pytest.fixture
def data_dir(tmp_path, monkeypatch, database):
    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    path = tmp_path / "data"
    run("init", "--data-dir", str(path))
    return str(path)


def engine_of(data_dir):
    return open_runtime(data_dir).engine


def test_prompts_import_parquet_messages_and_eval_share(data_dir, tmp_path):
    rows = [{"text": f"question {i}", "chat": None} for i in range(10)]
    rows.append({"text": None, "chat": CHAT})
    path = write_parquet(tmp_path / "p.parquet", rows)
    out = run(
        "prompts", "import", str(path), "--text-field", "text", "--messages-field", "chat",
        "--eval-share", "0.2", "--data-dir", data_dir,
    ).output  # fmt: skip
    assert "11 prompts added, 0 duplicates skipped (2 of the file eval)" in out
    from sqlmodel import select

    from storage.models import Prompt

    with transaction(engine_of(data_dir), readonly=True) as session:
        prompts = session.exec(select(Prompt)).all()
    assert sum(p.split == Split.eval for p in prompts) == 2
    assert [p.messages for p in prompts if p.messages] == [CHAT]


def test_prompts_import_is_audited_like_prefs_import(data_dir, tmp_path):
    from sqlmodel import select

    from storage.models import Audit

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    run("prompts", "import", str(path), "--data-dir", data_dir)
    seeds = write_jsonl(tmp_path / "s.jsonl", SEED_ROWS)
    run("prefs", "import", str(seeds), "--data-dir", data_dir)
    with transaction(engine_of(data_dir), readonly=True) as session:
        audits = session.exec(select(Audit).where(Audit.action.like("%.import"))).all()
    assert [(a.action, a.user_id, a.detail) for a in audits] == [
        ("prompts.import", None, {"file": str(path), "added": 2, "skipped": 1}),
        ("prefs.import", None, {"file": str(seeds), "added": 2, "skipped": 0}),
    ]


SEED_ROWS = [
    {"prompt": "what is 2+2?", "chosen": "4", "rejected": "5"},
    {
        "prompt": CHAT,
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    },
]

BAD_FILES = {
    "wrong encoding": (
        "latin1.jsonl",
        '{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
        '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"),
        "latin1.jsonl, line 2: not UTF-8",
    ),
    "missing field": (
        "missing.jsonl",
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n{"prompt": "x", "chosen": "a"}\n',
        "missing.jsonl, line 2, field 'rejected': missing",
    ),
    "malformed line": (
        "broken.jsonl",
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n{"prompt": "x", "chosen"\n',
        "broken.jsonl, line 2: malformed JSON",
    ),
    "empty file": ("empty.jsonl", b"", "empty.jsonl: empty file"),
    "NUL character": (
        "nul.jsonl",
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
        b'{"prompt": "x\\u0000", "chosen": "a", "rejected": "b"}\n',
        "nul.jsonl, line 2, field 'prompt': a NUL character (\\x00) at character 2",
    ),
    "lone surrogate": (
        "surrogate.jsonl",
        b'{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
        b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n',
        "surrogate.jsonl, line 2, field 'prompt': a lone surrogate (\\ud800) at character 1",
    ),
    "10 MB prompt": (
        "huge.jsonl",
        (
            '{"prompt": "ok", "chosen": "a", "rejected": "b"}\n'
            + json.dumps({"prompt": "x" * 10_485_760, "chosen": "a", "rejected": "b"})
            + "\n"
        ).encode(),
        "huge.jsonl, line 2, field 'prompt': prompt of 10,485,760 characters (limit 100,000)",
    ),
}


@pytest.mark.parametrize("command", ["prompts", "prefs"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_import_files_name_the_error_and_change_nothing(data_dir, tmp_path, command, case):
    name, content, message = BAD_FILES[case]
    if command == "prompts" and case == "missing field":
        content, message = b'{"prompt": "ok"}\n{"text": "x"}\n', "line 2, field 'prompt': missing"
    path = tmp_path / name
    path.write_bytes(content)
    before = status(data_dir)["counts"]
    result = run(command, "import", str(path), "--data-dir", data_dir, ok=False)
    assert result.exit_code == 1
    assert message in result.output
    assert status(data_dir)["counts"] == before


def test_seed_import_then_export_round_trip(data_dir, tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", SEED_ROWS)
    out = run("prefs", "import", str(path), "--data-dir", data_dir).output
    assert "2 seed preferences added, 0 duplicates skipped" in out
    again = run("prefs", "import", str(path), "--data-dir", data_dir).output
    assert "0 seed preferences added, 2 duplicates skipped" in again
    assert "proxy: not refit, 2 comparisons (it needs 8)" in out
    assert "proxy" not in again  # nothing new: nothing to refit
    counts = status(data_dir)["counts"]
    assert (counts["pair"], counts["response"], counts["label"], counts["prompt"]) == (2, 4, 2, 2)
    assert status(data_dir)["labels"] == {"seed": 2}

    export_path = tmp_path / "out.jsonl"
    out = run(
        "export", "--format", "jsonl", "--layout", "conversational", "--out", str(export_path),
        "--source", "seed", "--data-dir", data_dir,
    ).output  # fmt: skip
    assert "exported 2 preferences" in out
    rows = [json.loads(line) for line in export_path.read_text().splitlines()]
    assert rows[0]["prompt"] == [{"role": "user", "content": "what is 2+2?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "4"}]
    assert rows[1]["prompt"] == CHAT
    assert all(r["source"] == "seed" and r["iteration"] is None for r in rows)

    result = run(
        "export", "--out", str(tmp_path / "h.parquet"), "--source", "human",
        "--data-dir", data_dir, ok=False,
    )  # fmt: skip
    assert (
        result.exit_code == 1
        and (
            "nothing to export: no decided pairs match the filters (sources human; annotators "
            "flagged by their gold accuracy left out)"
        )
        in result.output
    )
    result = run(
        "export", "--out", str(tmp_path / "h.parquet"), "--iteration", "-5",
        "--data-dir", data_dir, ok=False,
    )  # fmt: skip
    assert result.exit_code == 2 and "--iteration" in result.output
    result = run(
        "export", "--out", str(tmp_path / "x"), "--format", "csv", "--data-dir", data_dir, ok=False
    )
    assert "--format 'csv'" in result.output
    result = run(
        "export", "--out", str(tmp_path / "x"), "--source", "gold", "--data-dir", data_dir, ok=False
    )
    assert "--source ['gold']" in result.output


def test_seed_import_refits_the_embedded_proxy(data_dir, tmp_path):
    """A user's own seed data does what the demos' do: the proxy's first version is fitted on
    it, so the next round pairs by its scores and carries its suggestions."""
    from labeling.proxy import latest_version, load_proxy

    topics = ("refund", "password", "shipping", "billing", "account", "returns")
    rows = [
        {
            "prompt": f"question {i} about {topic}",
            "chosen": f"Sorry about the {topic} trouble. Here is how to fix it, step by step.",
            "rejected": "no.",
        }
        for i, topic in enumerate(topics * 2)
    ]
    out = run(
        "prefs", "import", str(write_jsonl(tmp_path / "s.jsonl", rows)), "--data-dir", data_dir
    ).output
    assert "12 seed preferences added" in out and "proxy v1: fitted on 12 labels" in out
    engine = engine_of(data_dir)
    version = latest_version(engine=engine)
    assert (version.version, version.n_labels) == (1, 12)
    proxy = load_proxy(settings=open_runtime(data_dir).settings, engine=engine)
    rewards = proxy.score(["a new question about refunds"] * 2, [rows[0]["chosen"], "no."])
    assert rewards[0] - rewards[1] > 0.5  # it learned the seeds' direction, on a new prompt

    more = write_jsonl(tmp_path / "more.jsonl", [{"prompt": "q", "chosen": "yes", "rejected": "x"}])
    out = run("prefs", "import", str(more), "--no-refit", "--data-dir", data_dir).output
    assert "1 seed preferences added" in out and "proxy" not in out
    assert latest_version(engine=engine).version == 1


@pytest.mark.parametrize("layout", ["standard", "conversational"])
def test_a_jsonl_export_imports_again_as_seed_preferences(
    data_dir, tmp_path, layout, database, monkeypatch
):
    rows = [
        {"prompt": f"what is {ODD}?", "chosen": f"it is {ODD}", "rejected": "no idea"},
        {
            "prompt": CHAT,
            "chosen": [assistant("hello\u2028there")],
            "rejected": [assistant("go\x85away")],
        },
    ]
    run("prefs", "import", str(write_jsonl(tmp_path / "s.jsonl", rows)), "--data-dir", data_dir)

    def export(out, data_dir):
        run(
            "export",
            "--format",
            "jsonl",
            "--layout",
            layout,
            "--out",
            str(out),
            "--data-dir",
            data_dir,
        )

    first = tmp_path / "first.jsonl"
    export(first, data_dir)
    assert "\u2028" in first.read_text(encoding="utf-8")  # written raw (ensure_ascii=False)

    other = str(tmp_path / "other")
    with ExitStack() as stack:  # another data directory, and on PostgreSQL another database
        if database == "postgres":
            url = stack.enter_context(fresh_postgres_database())
            monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
        run("init", "--data-dir", other)
        out = run("prefs", "import", str(first), "--data-dir", other).output
        second = tmp_path / "second.jsonl"
        export(second, other)
    assert "2 seed preferences added, 0 duplicates skipped" in out

    def content(path):
        lines = path.read_text(encoding="utf-8").split("\n")
        return [
            {k: row[k] for k in ("prompt", "chosen", "rejected")}
            for row in map(json.loads, filter(None, lines))
        ]

    assert content(second) == content(first)
    chosen = f"it is {ODD}" if layout == "standard" else [assistant(f"it is {ODD}")]
    assert chosen in [r["chosen"] for r in content(first)]


def test_export_push_to_hub_offline_is_a_clear_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run(
        "prefs", "import", str(write_jsonl(tmp_path / "s.jsonl", SEED_ROWS)), "--data-dir", data_dir
    )
    result = run(
        "export", "--out", str(tmp_path / "p.parquet"), "--push-to-hub", "me/prefs",
        "--data-dir", data_dir, ok=False,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "exported 2 preferences" in result.output
    assert "cannot push to me/prefs" in result.output and "offline" in result.output


def test_push_to_hub_goes_past_the_offline_default_as_its_error_says(data_dir, tmp_path):
    """`prefloop` keeps the Hub offline by default: the error said "Unset HF_HUB_OFFLINE", which
    changed nothing. Run as the command, with the advice taken, the push gets past it (and stops
    at the missing token here)."""
    import os
    import subprocess
    import sys

    run(
        "prefs", "import", str(write_jsonl(tmp_path / "s.jsonl", SEED_ROWS)), "--data-dir", data_dir
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no stored token

    def push(**extra: str) -> str:
        args = ["export", "--out", str(tmp_path / "p.parquet"), "--push-to-hub", "me/prefs"]
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args, "--data-dir", data_dir],
            env={**env, **extra}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        return " ".join((done.stdout + done.stderr).split())

    assert "Run the push with HF_HUB_OFFLINE=0 on a machine with network access" in push()
    assert "cannot push to me/prefs: no Hugging Face token" in push(HF_HUB_OFFLINE="0")


def test_users_token_is_shown_once_and_stored_hashed(data_dir):
    from storage import crud

    run("users", "add", "ann", "--data-dir", data_dir)
    out = run("users", "token", "ann", "--data-dir", data_dir).output
    token = out.split("API token of 'ann': ")[1].split()[0]
    assert token.startswith("pfl_")
    with transaction(engine_of(data_dir), readonly=True) as session:
        user = crud.get_user_by_name(session=session, name="ann")
        assert user.token_hash == hash_token(token)
    second = run("users", "token", "ann", "--data-dir", data_dir).output
    assert token not in second  # a new one replaces it
    assert run("users", "token", "nobody", "--data-dir", data_dir, ok=False).exit_code == 1


def test_prompts_listed_taken_out_of_rounds_and_put_back(data_dir, tmp_path):
    """An admin takes a bad prompt out of the rounds by id: it stays stored, with its pairs, and
    no round samples it until it is put back. Unknown ids change nothing."""
    from sqlmodel import select

    from storage import crud, pairs

    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "Explain DPO"}, {"prompt": "A 50% off coupon, please"}, {"prompt": "Hi"}],
    )
    run("prompts", "import", str(path), "--data-dir", data_dir)
    listed = run("prompts", "list", "--contains", "50%", "--data-dir", data_dir).output
    (row,) = listed.splitlines()[1:]  # the header, then the one match (% is no wildcard)
    coupon = int(row.split()[0])
    assert "train  yes" in row and "A 50% off coupon, please" in row

    def train_ids() -> set[int]:
        engine = engine_of(data_dir)
        with transaction(engine, readonly=True) as session:
            ids = {p.id for p in pairs.train_prompts(session=session, limit=10, seed=0)}
        engine.dispose()
        return ids

    assert coupon in train_ids()
    out = run("prompts", "deactivate", str(coupon), "--data-dir", data_dir).output
    assert out.strip() == "1 prompts taken out of rounds and evaluations"
    assert coupon not in train_ids() and len(train_ids()) == 2
    inactive = run("prompts", "list", "--inactive", "--data-dir", data_dir).output
    assert [int(line.split()[0]) for line in inactive.splitlines()[1:]] == [coupon]
    refused = run(
        "prompts", "activate", str(coupon), "99999", "--data-dir", data_dir, ok=False
    ).output
    assert "no prompt 99999: nothing changed" in refused and coupon not in train_ids()
    run("prompts", "activate", str(coupon), "--data-dir", data_dir)
    assert coupon in train_ids()
    engine = engine_of(data_dir)
    with transaction(engine, readonly=True) as session:
        audits = [(a.action, a.detail) for a in session.exec(select(crud.Audit))]
    engine.dispose()
    assert audits[-2:] == [
        ("prompts.deactivate", {"ids": [coupon]}),
        ("prompts.activate", {"ids": [coupon]}),
    ]
