"""prefloop gold import / mark / unmark / status / lift, against a real data directory."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from storage import gold, queue
from storage.db import transaction
from storage.models import Audit, Pair, Route
from storage.runtime import open_runtime
from tests.app.test_cli import run, status
from tests.factories import label_pair, make_pairs, make_user
from tests.labeling.test_importing import write_jsonl


@pytest.fixture
def data_dir(tmp_path, monkeypatch, database):
    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    path = tmp_path / "data"
    run("init", "--data-dir", str(path))
    return str(path)


def test_gold_import_mark_status_lift_unmark_all_audited(data_dir, tmp_path):
    rows = [{"prompt": f"q{i}", "a": f"good {i}", "b": f"bad {i}", "answer": "a"} for i in range(3)]
    path = write_jsonl(tmp_path / "gold.jsonl", rows + rows[:1])
    out = run("gold", "import", str(path), "--data-dir", data_dir).output
    assert "3 gold pairs added, 1 duplicates skipped" in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "a": "x", "b": "y", "answer": "?"}])
    failed = run("gold", "import", str(bad), "--data-dir", data_dir, ok=False)
    assert failed.exit_code == 1 and "line 1, field 'answer'" in failed.output

    engine = open_runtime(data_dir).engine
    with transaction(engine) as session:
        ann = make_user(session, name="ann").id
        pair_id = make_pairs(session, 1)[0].id
    run("gold", "mark", str(pair_id), "--answer", "b", "--data-dir", data_dir)
    again = run("gold", "mark", str(pair_id), "--answer", "b", "--data-dir", data_dir, ok=False)
    assert "gold pair already" in again.output
    wrong = run("gold", "mark", str(pair_id), "--answer", "left", "--data-dir", data_dir, ok=False)
    assert "--answer 'left'" in wrong.output

    with transaction(engine) as session:  # ann gets one gold pair wrong
        claim = queue.claim_next_pair(session=session, user_id=ann, lease_seconds=60, gold_rate=1)
        answer = gold.gold_answers(session=session)[claim.pair_id]
        a_left = not claim.swapped
        choice = "right" if (answer == "a") == a_left else "left"
        queue.submit_label(session=session, user_id=ann, pair_id=claim.pair_id, shown_choice=choice)
    report = json.loads(run("gold", "status", "--json", "--data-dir", data_dir).output)
    assert report["gold_pairs"] == 4 and report["gold_labels"] == 1
    (row,) = report["annotators"]
    assert (row["name"], row["gold_seen"], row["gold_correct"], row["flagged"]) == (
        "ann",
        1,
        0,
        False,
    )
    text = run("gold", "status", "--data-dir", data_dir).output
    assert "4 gold pairs, 1 gold labels" in text and "ann" in text
    assert status(data_dir)["gold"] == {"pairs": 4, "labels": 1}
    assert "no user 'bob'" in run("gold", "lift", "bob", "--data-dir", data_dir, ok=False).output
    run("gold", "lift", "ann", "--data-dir", data_dir)
    run("gold", "unmark", str(pair_id), "--data-dir", data_dir)
    with transaction(engine, readonly=True) as session:
        assert session.get(Pair, pair_id).route == Route.human
        actions = [a.action for a in session.exec(select(Audit)) if a.action.startswith("gold.")]
    assert actions == ["gold.import", "gold.mark", "gold.lift", "gold.remove"]


def test_review_list_and_settle(data_dir):
    from storage.models import Role

    engine = open_runtime(data_dir).engine
    with transaction(engine) as session:
        ann, bob = make_user(session, name="ann"), make_user(session, name="bob")
        make_user(session, name="boss", role=Role.admin)
        (pair,) = make_pairs(session, 1, overlap=2)
        label_pair(session, pair, "a", "b", users=(ann, bob))
    listed = json.loads(run("review", "list", "--json", "--data-dir", data_dir).output)
    assert listed["total"] == 1 and listed["pairs"][0]["pair_id"] == pair.id
    assert "1 pairs whose labels disagree" in run("review", "list", "--data-dir", data_dir).output
    args = ("review", "settle", str(pair.id), "--choice")
    assert "--choice 'left'" in run(*args, "left", "--data-dir", data_dir, ok=False).output
    refused = run(*args, "a", "--as", "ann", "--data-dir", data_dir, ok=False).output
    assert "no active admin" in refused
    out = run(*args, "a", "--as", "boss", "--note", "A asks", "--data-dir", data_dir).output
    assert f"pair {pair.id} settled: a (by boss)" in out
    assert json.loads(run("review", "list", "--json", "--data-dir", data_dir).output)["total"] == 0
    with transaction(engine, readonly=True) as session:
        audit = session.exec(select(Audit).where(Audit.action == "review.settle")).one()
    assert audit.detail == {"via": "cli", "pair_id": pair.id, "choice": "a"}


def test_guidelines_set_and_show(data_dir, tmp_path):
    path = tmp_path / "rules.md"
    assert (
        "no such file"
        in run("guidelines", "set", str(path), "--data-dir", data_dir, ok=False).output
    )
    path.write_text("# Rules\n\nPrefer the reply that answers.\n", encoding="utf-8")
    out = run("guidelines", "set", str(path), "--data-dir", data_dir).output
    assert "guidelines version 1 published" in out
    again = run("guidelines", "set", str(path), "--data-dir", data_dir, ok=False).output
    assert "the same as version 1" in again
    (tmp_path / "v2.md").write_text("Be brief.", encoding="utf-8")
    run("guidelines", "set", str(tmp_path / "v2.md"), "--data-dir", data_dir)
    assert run("guidelines", "show", "--data-dir", data_dir).stdout.startswith("Be brief.")
    first = run("guidelines", "show", "--version", "1", "--data-dir", data_dir).stdout
    assert first.startswith("# Rules")
    assert (
        "no guidelines version 7"
        in run("guidelines", "show", "--version", "7", "--data-dir", data_dir, ok=False).output
    )
    with transaction(open_runtime(data_dir).engine, readonly=True) as session:
        audits = session.exec(select(Audit).where(Audit.action == "guidelines.publish")).all()
    assert [a.detail["version"] for a in audits] == [1, 2]
