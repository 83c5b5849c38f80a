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
def test_every_format_loads_with_datasets(engine, tmp_path, fmt):
    seed_labeled(engine, 3)
    out = tmp_path / {"jsonl": "p.jsonl", "parquet": "p.parquet", "hf": "p"}[fmt]
    export_preferences(engine=engine, out=out, format=fmt, layout="conversational")
    dataset = load_export(out, fmt)
    assert len(dataset) == 3
    row = dataset[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("prompt")
    assert row["chosen"] == [{"role": "assistant", "content": "a kind and helpful answer 0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "a rude answer 0"}]
    assert (row["source"], row["annotators"], row["strategy"]) == ("human", ["alice"], "max_min")
    assert row["agreement"] == 1.0 and row["proxy_p"] == 0.75 and row["iteration"] is None


def test_hf_export_streams_into_shards_that_load_in_order(engine, tmp_path, monkeypatch):
    """The hf directory is written row group by row group (no whole Dataset in memory); with
    tiny row groups and shards, every shard is listed, in order, and the rows come back whole."""
    import datasets

    from labeling import export

    monkeypatch.setattr(export, "ROWS_PER_GROUP", 2)
    monkeypatch.setattr(export, "MAX_SHARD_BYTES", 1)
    pairs = seed_labeled(engine, 5)
    out = tmp_path / "ds"
    export_preferences(engine=engine, out=out, format="hf", layout="conversational")
    names = [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == names + ["dataset_info.json", "state.json"]
    state = json.loads((out / "state.json").read_text())
    assert [f["filename"] for f in state["_data_files"]] == names
    dataset = datasets.load_from_disk(str(out))
    assert dataset["pair_id"] == [p.id for p in pairs]
    assert dataset.features["chosen"] == datasets.List(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )
    # what from_parquet + save_to_disk made of the same rows
    parquet = tmp_path / "p.parquet"
    export_preferences(engine=engine, out=parquet, format="parquet", layout="conversational")
    reference = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(tmp_path / "cache"))
    assert dataset.features == reference.features and dataset[:] == reference[:]
    # map() names its cache file after the fingerprint: each export has its own
    assert dataset.map(lambda row: {"n": len(row["chosen"])})["n"] == [1] * 5
    again = tmp_path / "again"
    export_preferences(engine=engine, out=again, format="hf", layout="conversational")
    assert datasets.load_from_disk(str(again))._fingerprint != dataset._fingerprint


def test_standard_layout_and_chat_prompts(engine, tmp_path):
    (pair,) = seed_labeled(engine, 1, chat=True)
    with transaction(engine) as session:
        from sqlmodel import select

        from storage.models import Pair, Prompt

        chat_prompt = session.exec(select(Prompt).where(Prompt.text == "and now?")).one()
        session.get(Pair, pair.id).prompt_id = chat_prompt.id
    out = tmp_path / "p.jsonl"
    export_preferences(engine=engine, out=out, format="jsonl", layout="standard")
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["prompt"], row["chosen"]) == ("and now?", "a kind and helpful answer 0")
    export_preferences(engine=engine, out=out, format="jsonl", layout="conversational")
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "and now?"},
    ]


def seed_for_filters(engine):
    """Six pairs that every filter splits; returns {name: pair id}. Labels choose a, but
    carol's on p3 (agreement 2/3).

    p0  alice                iteration 0   train
    p1  proxy                iteration 0   train
    p2  bob                  iteration 1   eval
    p3  alice, bob, carol    iteration 1   train
    p4  proxy                no iteration  eval
    p5  bob                  no iteration  train
    """
    from storage.models import IterationState, Prompt

    with transaction(engine) as session:
        users = {name: make_user(session, name=name).id for name in ("alice", "bob", "carol")}
        it0 = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        it0.state = IterationState.deployed
        session.flush()
        it1 = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        plan = [
            ([("alice", Choice.a)], it0.id, Split.train),
            ([(None, Choice.a)], it0.id, Split.train),
            ([("bob", Choice.a)], it1.id, Split.eval),
            ([("alice", Choice.a), ("bob", Choice.a), ("carol", Choice.b)], it1.id, Split.train),
            ([(None, Choice.a)], None, Split.eval),
            ([("bob", Choice.a)], None, Split.train),
        ]
        pairs = make_pairs(session, len(plan))
        for pair, (labels, iteration_id, split) in zip(pairs, plan, strict=True):
            pair.iteration_id = iteration_id
            session.get(Prompt, pair.prompt_id).split = split
            for name, choice in labels:
                session.add(
                    Label(
                        pair_id=pair.id,
                        user_id=None if name is None else users[name],
                        source=LabelSource.proxy if name is None else LabelSource.human,
                        choice=choice,
                    )
                )
        return {f"p{i}": pair.id for i, pair in enumerate(pairs)}


def test_each_filter_keeps_some_pairs_and_drops_others(engine, tmp_path):
    ids = seed_for_filters(engine)
    out = tmp_path / "p.jsonl"

    def exported(**filters):
        export_preferences(engine=engine, out=out, format="jsonl", filters=ExportFilters(**filters))
        return [json.loads(line) for line in out.read_text().splitlines()]

    def kept(**filters):
        return [r["pair_id"] for r in exported(**filters)]

    def pairs(*names):
        return [ids[name] for name in names]

    assert kept() == pairs("p0", "p1", "p2", "p3", "p4", "p5")
    assert kept(iterations=[0]) == pairs("p0", "p1")
    assert kept(iterations=[1]) == pairs("p2", "p3")
    assert kept(sources=("proxy",)) == pairs("p1", "p4")
    assert kept(sources=("human",)) == pairs("p0", "p2", "p3", "p5")
    assert kept(min_agreement=0.9) == pairs("p0", "p1", "p2", "p4", "p5")
    assert kept(min_agreement=0.6) == pairs("p0", "p1", "p2", "p3", "p4", "p5")
    assert kept(split=Split.eval) == pairs("p2", "p4")
    assert kept(split=Split.train) == pairs("p0", "p1", "p3", "p5")
    # only the named annotators' labels count: p3 is alice's alone, so unanimous
    by_alice = exported(annotators=["alice"])
    assert [(r["pair_id"], r["annotators"], r["agreement"]) for r in by_alice] == [
        (ids["p0"], ["alice"], 1.0),
        (ids["p3"], ["alice"], 1.0),
    ]
    # bob's a against carol's b is a draw: p3 has no winner among them
    assert kept(annotators=["bob", "carol"]) == pairs("p2", "p5")
    assert kept(iterations=[1], min_agreement=0.9) == pairs("p2")
    with pytest.raises(ExportError):
        ExportFilters(min_agreement=1.5)


def test_an_empty_export_is_refused_and_writes_nothing(engine, tmp_path):
    seed_labeled(engine, 2)
    for fmt, name in [("parquet", "e.parquet"), ("jsonl", "e.jsonl"), ("hf", "e")]:
        with pytest.raises(ExportError, match="nothing to export"):
            export_preferences(
                engine=engine,
                out=tmp_path / name,
                format=fmt,
                filters=ExportFilters(split=Split.eval),
            )
    assert all(p.name.startswith("prefloop.db") for p in tmp_path.iterdir())


def test_export_refuses_to_replace_a_foreign_directory(engine, tmp_path):
    seed_labeled(engine, 2)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="no saved dataset"):
        export_preferences(engine=engine, out=precious, format="hf")
    with pytest.raises(ExportError, match="is a directory"):
        export_preferences(engine=engine, out=precious, format="parquet")
    assert (precious / "notes.txt").read_text() == "keep me"
    # an earlier hf export is replaced
    export_preferences(engine=engine, out=tmp_path / "ds", format="hf")
    export_preferences(engine=engine, out=tmp_path / "ds", format="hf")
    assert len(load_export(tmp_path / "ds", "hf")) == 2
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith("prefloop.db")]
    assert sorted(leftovers) == ["ds", "home"]


def test_push_to_hub_offline_names_the_cause(engine, tmp_path, monkeypatch):
    seed_labeled(engine, 1)
    out = tmp_path / "p.parquet"
    export_preferences(engine=engine, out=out, format="parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="offline mode"):
        push_to_hub(out, format="parquet", repo="me/prefs", token="hf_x")


def test_push_to_hub_without_token_names_the_cause(engine, tmp_path, monkeypatch):
    from huggingface_hub import constants

    seed_labeled(engine, 1)
    out = tmp_path / "p.parquet"
    export_preferences(engine=engine, out=out, format="parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_to_hub(out, format="parquet", repo="me/prefs")


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_export_file_is_one_file_in_its_own_directory(engine, tmp_path, fmt):
    import zipfile

    seed_labeled(engine, 2)
    result = export_file(engine=engine, format=fmt, directory=tmp_path)
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
            engine=engine,
            format=fmt,
            filters=ExportFilters(split=Split.eval),
            directory=tmp_path,
        )
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("prefloop-export-")]) == 1
