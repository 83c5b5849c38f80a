"""Admin view, data tab: the export download's filters, called as the page's events are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
from sqlmodel import select

from app.ui.admin_data import build_data
from app.ui.guard import AppContext, Refused
from storage import crud
from storage.db import transaction, upgrade
from storage.models import PolicyStatus, Role
from storage.runtime import open_runtime
from tests.app.live_server import seed_users
from tests.app.test_server import _as_user, _handlers
from tests.labeling.test_export import seed_for_filters


@pytest.fixture
def ctx(tmp_path):
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    yield AppContext(rt=rt, secret=b"s" * 32)
    rt.engine.dispose()


@pytest.fixture
def export(ctx):
    with gr.Blocks() as blocks:
        build_data(ctx)
    return _handlers(blocks)["export"]


def _exported(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    shutil.rmtree(Path(path).parent)
    return rows


def _export_audits(ctx) -> list[dict]:
    with transaction(ctx.rt.engine, readonly=True) as session:
        return [a.detail for a in session.exec(select(crud.Audit)) if a.action == "export"]


def test_the_filters_reach_the_download(ctx, export):
    ids = seed_for_filters(ctx.rt.engine)
    users = seed_users(ctx.rt, {"boss": Role.admin})
    as_boss = _as_user(ctx, users["boss"])
    everything = ["human", "proxy", "seed"]

    message, path = export("jsonl", "standard", everything, " 1 ", 0.9, "", "all", False, as_boss)
    assert "1 preference pairs exported" in message
    assert [r["pair_id"] for r in _exported(path)] == [ids["p2"]]
    message, path = export(
        "jsonl", "standard", ["human"], "", 0, "alice, ", "train", False, as_boss
    )
    rows = _exported(path)
    assert [(r["pair_id"], r["annotators"]) for r in rows] == [
        (ids["p0"], ["alice"]),
        (ids["p3"], ["alice"]),
    ]
    message, path = export(
        "jsonl", "standard", ["proxy"], "0,1", None, None, "eval", False, as_boss
    )
    assert (
        path is None
        and (
            "nothing to export: no decided pairs match the filters (iteration 0, 1; sources proxy; "
            "eval prompts; annotators flagged by their gold accuracy left out)"
        )
        in message
    )
    audits = _export_audits(ctx)
    assert [(a["iterations"], a["min_agreement"], a["split"]) for a in audits] == [
        ([1], 0.9, None),
        (None, 0.0, "train"),
    ]
    assert audits[1]["annotators"] == ["alice"] and audits[1]["sources"] == ["human"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"min_agreement": 2}, "Min agreement"),
        ({"min_agreement": -0.1}, "Min agreement"),
        ({"min_agreement": "0.5"}, "Min agreement"),
        ({"min_agreement": True}, "Min agreement"),
        ({"annotators": "alice, zed"}, "Annotators: no user named &#x27;zed&#x27;"),
        ({"annotators": ["alice"]}, "Annotators: expected text"),
        ({"iterations": "one"}, "Iterations: &#x27;one&#x27; is no iteration k"),
        ({"iterations": "-1"}, "Iterations: &#x27;-1&#x27; is no iteration k"),
        ({"iterations": "0, 7"}, "Iterations: no iteration 7"),
        ({"split": "test"}, "Split"),
        ({"sources": []}, "Sources: pick at least one"),
        ({"sources": ["human", "crowd"]}, "Sources: expected some of"),
        ({"include_flagged": "yes"}, "Include flagged annotators"),
    ],
)
def test_a_bad_filter_is_refused_naming_its_field(ctx, export, change, field):
    seed_for_filters(ctx.rt.engine)
    users = seed_users(ctx.rt, {"boss": Role.admin})
    inputs = {
        "sources": ["human", "proxy", "seed"],
        "iterations": "",
        "min_agreement": 0.0,
        "annotators": "",
        "split": "all",
        "include_flagged": False,
    }
    inputs.update(change)
    message, path = export(
        "jsonl",
        "standard",
        inputs["sources"],
        inputs["iterations"],
        inputs["min_agreement"],
        inputs["annotators"],
        inputs["split"],
        inputs["include_flagged"],
        _as_user(ctx, users["boss"]),
    )
    assert path is None and 'class="pf-error"' in message
    assert field in message
    assert _export_audits(ctx) == []


def test_an_annotator_is_refused(ctx, export):
    seed_for_filters(ctx.rt.engine)
    users = seed_users(ctx.rt, {"ann": Role.annotator})
    with pytest.raises(Refused, match="Admins only"):
        export(
            "jsonl", "standard", ["human"], "", 0.0, "", "all", False, _as_user(ctx, users["ann"])
        )
    assert _export_audits(ctx) == []


def test_an_upload_error_names_the_file_and_the_item_or_line(ctx, tmp_path):
    with gr.Blocks() as blocks:
        build_data(ctx)
    upload = _handlers(blocks)["prompts_upload"]
    users = seed_users(ctx.rt, {"boss": Role.admin})
    as_boss = _as_user(ctx, users["boss"])
    bad_array = tmp_path / "prompts.json"
    bad_array.write_text(json.dumps([{"prompt": "fine"}, {"text": "no prompt field"}]))
    message = upload(str(bad_array), "prompt", as_boss)
    assert "prompts.json, item 2, field &#x27;prompt&#x27;" in message
    assert "Nothing was imported" in message
    bad_lines = tmp_path / "prompts.jsonl"
    bad_lines.write_text('{"prompt": "fine"}\n{"prompt": \n')
    assert "prompts.jsonl, line 2" in upload(str(bad_lines), "prompt", as_boss)
    with transaction(ctx.rt.engine, readonly=True) as session:
        assert crud.table_counts(session=session)["prompt"] == 0


def test_an_upload_names_the_prompts_the_policy_cannot_answer(ctx, tmp_path, demo_policy_dir):
    from tests.factories import refusing_system_turns

    strict = refusing_system_turns(demo_policy_dir, tmp_path / "strict")
    with transaction(ctx.rt.engine) as session:
        crud.create_policy(
            session=session, version=0, path=str(strict), status=PolicyStatus.deployed
        )
    with gr.Blocks() as blocks:
        build_data(ctx)
    upload = _handlers(blocks)["prompts_upload"]
    as_boss = _as_user(ctx, seed_users(ctx.rt, {"boss": Role.admin})["boss"])
    system = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "where is my refund?"}, {"messages": system}]))
    message = upload(str(path), "prompt", as_boss)
    assert "2 prompts added, 0 duplicates skipped." in message
    assert (
        '<p class="pf-warning" role="status">prompts.json: 1 of these prompts cannot be sampled '
        "by the policy, and rounds and evaluations pass them over (they are stored all the "
        "same): 1 refused by the chat template: System role not supported: item 2</p>"
    ) in message
    with transaction(ctx.rt.engine, readonly=True) as session:
        assert crud.table_counts(session=session)["prompt"] == 2


def test_an_upload_on_a_replica_without_the_policies_says_nothing_of_them(ctx, tmp_path):
    """A replica that serves only has no policy directories: the upload stores the prompts and
    asks no policy, where loading a tokenizer from a missing directory failed it."""
    with transaction(ctx.rt.engine) as session:
        crud.create_policy(
            session=session,
            version=0,
            path=str(tmp_path / "on-the-scheduler-host" / "v0"),
            status=PolicyStatus.deployed,
        )
    with gr.Blocks() as blocks:
        build_data(ctx)
    upload = _handlers(blocks)["prompts_upload"]
    as_boss = _as_user(ctx, seed_users(ctx.rt, {"boss": Role.admin})["boss"])
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "where is my refund? " * 400}) + "\n")
    message = upload(str(path), "prompt", as_boss)
    assert (
        message
        == '<span class="pf-ok">prompts.jsonl: 1 prompts added, 0 duplicates skipped.</span>'
    )
    with transaction(ctx.rt.engine, readonly=True) as session:
        assert crud.table_counts(session=session)["prompt"] == 1
