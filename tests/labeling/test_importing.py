"""Readers for prompt and seed-preference files in every format, and the errors they name."""

from __future__ import annotations

import json

import pytest

from labeling.importing import ImportFileError, read_preferences, read_prompts
from storage.models import Split

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset_dir(path, splits):
    import datasets

    dataset_dict = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    )
    dataset_dict.save_to_disk(str(path))
    return path


def test_prompts_from_parquet_and_dataset_dirs(tmp_path):
    rows = [{"question": "one", "chat": None}, {"question": None, "chat": CHAT}]
    for path in (
        write_parquet(tmp_path / "p.parquet", rows),
        write_dataset_dir(tmp_path / "ds", {"train": rows}),
    ):
        records = read_prompts(path, text_field="question", messages_field="chat")
        assert [r.text for r in records] == ["one", "hi?"]
        assert records[1].messages == CHAT and records[0].messages is None
        assert all(r.source == path.name and r.split == Split.train for r in records)


def test_dataset_dir_test_split_becomes_eval(tmp_path):
    path = write_dataset_dir(
        tmp_path / "ds", {"train": [{"prompt": "a"}], "test": [{"prompt": "b"}]}
    )
    assert [(r.text, r.split) for r in read_prompts(path)] == [
        ("a", Split.train),
        ("b", Split.eval),
    ]


def test_eval_share_is_deterministic_and_spares_explicit_splits(tmp_path):
    rows = [{"prompt": f"p{i}"} for i in range(20)] + [{"prompt": "x", "split": "train"}]
    forward = read_prompts(write_jsonl(tmp_path / "a.jsonl", rows), eval_share=0.25)
    backward = read_prompts(write_jsonl(tmp_path / "b.jsonl", rows[::-1]), eval_share=0.25)
    held = {r.text for r in forward if r.split == Split.eval}
    assert len(held) == 5 and "x" not in held
    assert held == {r.text for r in backward if r.split == Split.eval}
    assert {r.text for r in read_prompts(tmp_path / "a.jsonl") if r.split == Split.eval} == set()
    with pytest.raises(ValueError):
        read_prompts(tmp_path / "a.jsonl", eval_share=1.0)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.jsonl", '{"prompt": "ok"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "line 2"),
        ("e.jsonl", b"", "empty file"),
        ("e.csv", b"", "empty file"),
        ("m.csv", b"text\nhello\n", "line 1, field 'prompt': missing column"),
        ("w.csv", b'prompt\n"ok"\n"ok", "extra"\n', "line 3: more values than columns"),
        ("q.csv", b'prompt\n"open quote\n', "malformed CSV"),
        ("x.txt", b"prompt\n", "unknown format"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
        ("r.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n', "'messages[0].role'"),
        ("a.jsonl", b'{"messages": [{"role": "assistant", "content": "x"}]}\n', "the user's"),
        ("s.jsonl", b'{"prompt": "x", "split": 3}\n', "field 'split'"),
        ("l.jsonl", b"[1, 2]\n", "line 1: expected a JSON object"),
    ],
)
def test_bad_prompt_files_name_file_line_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError) as info:
        read_prompts(path)
    assert message in str(info.value) and name in str(info.value)


def test_missing_file_and_missing_parquet_column(tmp_path):
    with pytest.raises(ImportFileError, match="no such file"):
        read_prompts(tmp_path / "nope.jsonl")
    path = write_parquet(tmp_path / "p.parquet", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ImportFileError, match=r"p.parquet, row 1, field 'prompt': missing"):
        read_prompts(path)
    with pytest.raises(ImportFileError, match="not a dataset directory"):
        read_prompts(tmp_path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_10mb_prompt_is_refused(tmp_path, suffix):
    huge = "x" * (10 * 1024 * 1024)
    path = tmp_path / f"huge{suffix}"
    rows = [{"prompt": "fine"}, {"prompt": huge}]
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".csv":
        path.write_text("prompt\nfine\n" + huge + "\n")
    else:
        write_parquet(path, rows)
    with pytest.raises(ImportFileError) as info:
        read_prompts(path)
    message = str(info.value)
    assert "huge" in message and ("line 2" in message or "line 3" in message or "row 2" in message)
    assert "100,000" in message


def test_seed_preferences_standard_and_conversational(tmp_path):
    standard = write_jsonl(
        tmp_path / "s.jsonl", [{"prompt": "q?", "chosen": "good", "rejected": "bad"}]
    )
    (row,) = read_preferences(standard)
    assert (row.prompt.text, row.chosen, row.rejected) == ("q?", "good", "bad")

    explicit = {
        "prompt": CHAT,
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    implicit = {
        "chosen": [*CHAT, {"role": "assistant", "content": "hello"}],
        "rejected": [*CHAT, {"role": "assistant", "content": "go away"}],
    }
    for path in (
        write_parquet(tmp_path / "c.parquet", [explicit]),
        write_jsonl(tmp_path / "i.jsonl", [implicit]),
        write_dataset_dir(tmp_path / "ds", {"train": [explicit]}),
    ):
        (row,) = read_preferences(path)
        assert (row.prompt.messages, row.prompt.text) == (CHAT, "hi?")
        assert (row.chosen, row.rejected) == ("hello", "go away")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "field 'rejected': missing"),
        ({"chosen": "a", "rejected": "b"}, "field 'prompt': missing"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "the same text"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen': empty"),
        (
            {"prompt": "q", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]},
            "the assistant's",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "other"},
                    {"role": "assistant", "content": "b"},
                ],
            },
            "differs from 'chosen'",
        ),
    ],
)
def test_bad_seed_rows_name_the_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "y"}, row])
    with pytest.raises(ImportFileError) as info:
        read_preferences(path)
    assert "p.jsonl, line 2" in str(info.value) and message in str(info.value)
