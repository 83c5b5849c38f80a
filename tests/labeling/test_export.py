"""Exports: the files load with `datasets`, train a real DPOTrainer step, and hold what the
filters select."""

from __future__ import annotations

import json

import pytest

from labeling.export import (
    ExportError,
    ExportFilters,
    ExportFormat,
    HubPushError,
    Layout,
    export_file,
    export_preferences,
    load_export,
    push_to_hub,
)
from storage import crud
from storage.db import transaction
from storage.models import Choice, Label, LabelSource, Response, Split, Suggestion
from tests.factories import make_pairs, make_user


def seed_labeled(engine, n=6, *, chat=False):
    """n pairs with readable text: human labels on the even ones, proxy on the odd ones."""
    with transaction(engine) as session:
        user = make_user(session, name="alice")
        pairs = make_pairs(session, n)
        for i, pair in enumerate(pairs):
            a = session.get(Response, pair.response_a_id)
            b = session.get(Response, pair.response_b_id)
            a.text, b.text = f"a kind and helpful answer {i}", f"a rude answer {i}"
            human = i % 2 == 0
            session.add(
                Label(
                    pair_id=pair.id,
                    user_id=user.id if human else None,
                    source=LabelSource.human if human else LabelSource.proxy,
                    choice=Choice.a,
                )
            )
            session.add(Suggestion(pair_id=pair.id, p_a=0.75, agent="proxy:v1"))
        if chat:
            crud.add_prompts(
                session=session,
                prompts=[
                    crud.PromptIn(
                        text="and now?",
                        messages=[
                            {"role": "system", "content": "be kind"},
                            {"role": "user", "content": "and now?"},
                        ],
                    )
                ],
            )
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("layout", [Layout.standard, Layout.conversational])
@pytest.mark.parametrize("fmt", [ExportFormat.parquet, ExportFormat.hf])
def test_export_trains_one_dpo_step_unchanged(
    sqlite_engine, tmp_path, demo_policy_dir, layout, fmt
):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    seed_labeled(sqlite_engine, 4)
    out = tmp_path / ("prefs" if fmt == ExportFormat.hf else "prefs.parquet")
    result = export_preferences(engine=sqlite_engine, out=out, format=fmt, layout=layout)
    assert result.rows == 4
    dataset = load_export(out, fmt)

    before = AutoModelForCausalLM.from_pretrained(demo_policy_dir).state_dict()
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        use_cpu=True,
        bf16=False,
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        max_length=64,
        report_to=[],
        save_strategy="no",
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(model=str(demo_policy_dir), args=args, train_dataset=dataset)
    trainer.train()
    after = trainer.model.state_dict()
    moved = [name for name, tensor in before.items() if not torch.equal(tensor, after[name].cpu())]
    assert moved, "one DPO step changed no parameter"


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_every_format_loads_with_datasets(sqlite_engine, tmp_path, fmt):
    seed_labeled(sqlite_engine, 3)
    out = tmp_path / {"jsonl": "p.jsonl", "parquet": "p.parquet", "hf": "p"}[fmt]
    export_preferences(engine=sqlite_engine, out=out, format=fmt, layout="conversational")
    dataset = load_export(out, fmt)
    assert len(dataset) == 3
    row = dataset[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("prompt")
    assert row["chosen"] == [{"role": "assistant", "content": "a kind and helpful answer 0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "a rude answer 0"}]
    assert (row["source"], row["annotators"], row["strategy"]) == ("human", ["alice"], "max_min")
    assert row["agreement"] == 1.0 and row["proxy_p"] == 0.75 and row["iteration"] is None


def test_standard_layout_and_chat_prompts(sqlite_engine, tmp_path):
    (pair,) = seed_labeled(sqlite_engine, 1, chat=True)
    with transaction(sqlite_engine) as session:
        from sqlmodel import select

        from storage.models import Pair, Prompt

        chat_prompt = session.exec(select(Prompt).where(Prompt.text == "and now?")).one()
        session.get(Pair, pair.id).prompt_id = chat_prompt.id
    out = tmp_path / "p.jsonl"
    export_preferences(engine=sqlite_engine, out=out, format="jsonl", layout="standard")
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["prompt"], row["chosen"]) == ("and now?", "a kind and helpful answer 0")
    export_preferences(engine=sqlite_engine, out=out, format="jsonl", layout="conversational")
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "and now?"},
    ]


def test_filters_reach_the_file(sqlite_engine, tmp_path):
    seed_labeled(sqlite_engine, 6)
    out = tmp_path / "p.jsonl"

    def exported(**filters):
        export_preferences(
            engine=sqlite_engine, out=out, format="jsonl", filters=ExportFilters(**filters)
        )
        return [json.loads(line) for line in out.read_text().splitlines()]

    assert {r["source"] for r in exported(sources=("proxy",))} == {"proxy"}
    assert len(exported(sources=("proxy",))) == 3
    assert [r["annotators"] for r in exported(annotators=["alice"])] == [["alice"]] * 3
    with pytest.raises(ExportError, match="nothing to export"):
        exported(split=Split.eval)
    with pytest.raises(ExportError, match="nothing to export"):
        exported(iterations=[0])
    assert len(exported(min_agreement=1.0)) == 6
    with pytest.raises(ExportError):
        ExportFilters(min_agreement=1.5)


def test_an_empty_export_is_refused_and_writes_nothing(sqlite_engine, tmp_path):
    seed_labeled(sqlite_engine, 2)
    for fmt, name in [("parquet", "e.parquet"), ("jsonl", "e.jsonl"), ("hf", "e")]:
        with pytest.raises(ExportError, match="nothing to export"):
            export_preferences(
                engine=sqlite_engine,
                out=tmp_path / name,
                format=fmt,
                filters=ExportFilters(split=Split.eval),
            )
    assert all(p.name.startswith("prefloop.db") for p in tmp_path.iterdir())


def test_export_refuses_to_replace_a_foreign_directory(sqlite_engine, tmp_path):
    seed_labeled(sqlite_engine, 2)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="no saved dataset"):
        export_preferences(engine=sqlite_engine, out=precious, format="hf")
    with pytest.raises(ExportError, match="is a directory"):
        export_preferences(engine=sqlite_engine, out=precious, format="parquet")
    assert (precious / "notes.txt").read_text() == "keep me"
    # an earlier hf export is replaced
    export_preferences(engine=sqlite_engine, out=tmp_path / "ds", format="hf")
    export_preferences(engine=sqlite_engine, out=tmp_path / "ds", format="hf")
    assert len(load_export(tmp_path / "ds", "hf")) == 2
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith("prefloop.db")]
    assert sorted(leftovers) == ["ds", "home"]


def test_push_to_hub_offline_names_the_cause(sqlite_engine, tmp_path, monkeypatch):
    seed_labeled(sqlite_engine, 1)
    out = tmp_path / "p.parquet"
    export_preferences(engine=sqlite_engine, out=out, format="parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="offline mode"):
        push_to_hub(out, format="parquet", repo="me/prefs", token="hf_x")


def test_push_to_hub_without_token_names_the_cause(sqlite_engine, tmp_path, monkeypatch):
    from huggingface_hub import constants

    seed_labeled(sqlite_engine, 1)
    out = tmp_path / "p.parquet"
    export_preferences(engine=sqlite_engine, out=out, format="parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_to_hub(out, format="parquet", repo="me/prefs")


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_export_file_is_one_file_in_its_own_directory(sqlite_engine, tmp_path, fmt):
    import zipfile

    seed_labeled(sqlite_engine, 2)
    result = export_file(engine=sqlite_engine, format=fmt, directory=tmp_path)
    assert result.rows == 2 and result.path.is_file()
    assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]
    if fmt == ExportFormat.hf:
        with zipfile.ZipFile(result.path) as archive:
            archive.extractall(tmp_path / "unzipped")
        assert len(load_export(tmp_path / "unzipped" / "preferences", fmt)) == 2
    else:
        assert len(load_export(result.path, fmt)) == 2
    with pytest.raises(ExportError):
        export_file(
            engine=sqlite_engine,
            format=fmt,
            filters=ExportFilters(split=Split.eval),
            directory=tmp_path,
        )
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("prefloop-export-")]) == 1
