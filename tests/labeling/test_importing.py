"""Readers for prompt and seed-preference files in every format, and the errors they name."""

from __future__ import annotations

import csv
import json

import pytest

from labeling.importing import ImportFileError, read_preferences, read_prompts
from storage.models import Split

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    """rows[0] is the header. csv.writer quotes what needs quoting (newlines, quotes, commas),
    not U+2028 or U+0085."""
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset_dir(path, splits):
    """A DatasetDict of `splits` ({name: rows}), or a plain Dataset when `splits` is a list."""
    import datasets

    if isinstance(splits, list):
        saved = datasets.Dataset.from_list(splits)
    else:
        saved = datasets.DatasetDict(
            {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
        )
    saved.save_to_disk(str(path))
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


def test_eval_share_holds_out_train_split_rows_of_a_dataset_dict(tmp_path):
    rows = [{"prompt": f"p{i}"} for i in range(10)]
    plain = read_prompts(write_dataset_dir(tmp_path / "plain", rows), eval_share=0.3)
    train_only = read_prompts(write_dataset_dir(tmp_path / "dict", {"train": rows}), eval_share=0.3)
    held = {r.text for r in plain if r.split == Split.eval}
    assert len(held) == 3
    assert {r.text for r in train_only if r.split == Split.eval} == held


def test_eval_share_with_test_split_and_own_split_column(tmp_path):
    train = [{"prompt": f"p{i}", "split": None} for i in range(9)]
    train.append({"prompt": "kept", "split": "train"})
    path = write_dataset_dir(
        tmp_path / "ds", {"train": train, "test": [{"prompt": "t", "split": None}]}
    )
    records = {r.text: r.split for r in read_prompts(path, eval_share=1 / 3)}
    assert records["t"] == Split.eval and records["kept"] == Split.train
    # the share is of the 9 rows without a split: the test split is eval anyway
    assert sum(records[f"p{i}"] == Split.eval for i in range(9)) == 3


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


# U+2028 (line separator) and U+0085 (next line): str.splitlines breaks on them, JSON and CSV don't
ODD = "one\u2028two\x85three\x0cfour"


def test_jsonl_keeps_unicode_line_separators_in_strings(tmp_path):
    rows = [{"prompt": ODD}, {"messages": [{"role": "user", "content": f"chat {ODD}"}]}]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), "utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # raw, not escaped
    records = read_prompts(path)
    assert [r.text for r in records] == [ODD, f"chat {ODD}"]
    assert records[1].messages == [{"role": "user", "content": f"chat {ODD}"}]


def test_csv_rows_split_only_at_newlines_and_keep_their_start_line(tmp_path):
    rows = [["prompt", "split"], ["two\nlines", "train"], [ODD, "eval"]]
    records = read_prompts(write_csv(tmp_path / "ok.csv", rows))
    assert [(r.text, r.split) for r in records] == [
        ("two\nlines", Split.train),
        (ODD, Split.eval),
    ]
    # the quoted cell takes lines 2-3, the U+2028 row line 4: the empty prompt is on line 5
    bad = write_csv(tmp_path / "bad.csv", [*rows, ["", "train"]])
    with pytest.raises(ImportFileError) as info:
        read_prompts(bad)
    assert str(info.value).endswith("bad.csv, line 5, field 'prompt': empty prompt")


def test_csv_with_only_a_messages_column(tmp_path):
    rows = [["messages", "split"], [json.dumps(CHAT), ""], ["", "train"]]
    (record,) = read_prompts(write_csv(tmp_path / "chat.csv", rows[:2]))
    assert (record.text, record.messages) == ("hi?", CHAT)
    with pytest.raises(ImportFileError) as info:
        read_prompts(write_csv(tmp_path / "gap.csv", rows))
    assert str(info.value).endswith(
        "gap.csv, line 3, field 'prompt': missing (nor 'messages'; the row has ['split'])"
    )


def test_json_array_of_objects(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"prompt": ODD}, {"messages": CHAT}], indent=2), "utf-8")
    records = read_prompts(path)
    assert [(r.text, r.messages) for r in records] == [(ODD, None), ("hi?", CHAT)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.jsonl", '{"prompt": "ok"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "line 2"),
        ("e.jsonl", b"", "empty file"),
        ("e.csv", b"", "empty file"),
        ("m.csv", b"text\nhello\n", "line 1, field 'prompt': missing column"),
        (
            "w.csv",
            b'prompt\n"ok"\n"ok", "extra"\n',
            "line 3: 2 values, but the header (line 1) has 1 column",
        ),
        (
            "n.csv",
            b"prompt,split\nok,train\nshort\n",
            "line 3: 1 value, but the header (line 1) has 2 columns",
        ),
        (
            "d.csv",
            b"prompt,prompt\nok,ok\n",
            "line 1, field 'prompt': the header names this column twice",
        ),
        (
            "m2.csv",
            b"text,chat\nhello,\n",
            "line 1, field 'prompt': missing column (nor 'messages'; the header has ['text', 'chat'])",
        ),
        (
            "cr.csv",
            b"prompt\nok\na\rb\n",
            "line 3: malformed CSV: new-line character seen in unquoted field",
        ),
        ("q.csv", b'prompt\n"open quote\n', "malformed CSV"),
        ("x.txt", b"prompt\n", "unknown format"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
        ("r.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n', "'messages[0].role'"),
        ("a.jsonl", b'{"messages": [{"role": "assistant", "content": "x"}]}\n', "the user's"),
        ("s.jsonl", b'{"prompt": "x", "split": 3}\n', "field 'split'"),
        ("l.jsonl", b"[1, 2]\n", "line 1: expected a JSON object"),
        ("l.json", b'[{"prompt": "ok"}, 2]', "item 2: expected a JSON object"),
        ("f.json", b'[{"prompt": "ok"}, {"text": "x"}]', "item 2, field 'prompt': missing"),
        ("b.json", b'[{"prompt": "ok"},\n {"prompt": }]', "line 2: malformed JSON"),
        (
            "crlf.jsonl",
            '{"prompt": "a\u2028b"}\r\n{"prompt": "c\x85d\u2029e"}\r\n{"text": "x"}\r\n'.encode(),
            "line 3, field 'prompt': missing (nor 'messages'; the row has ['text'])",
        ),
        (
            "nul.jsonl",
            b'{"prompt": "ok"}\n{"prompt": "a\\u0000b"}\n',
            "line 2, field 'prompt': a NUL character (\\x00) at character 2",
        ),
        (
            "nulm.jsonl",
            b'{"messages": [{"role": "user", "content": "\\u0000"}, {"role": "user", "content": "x"}]}\n',
            "line 1, field 'messages[0].content': a NUL character",
        ),
        (
            "sur.jsonl",
            b'{"prompt": "ok"}\n{"prompt": "a\\ud800"}\n',
            "line 2, field 'prompt': a lone surrogate (\\ud800) at character 2",
        ),
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


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("huge.jsonl", "huge.jsonl, line 2, field 'prompt': prompt of 10,485,760 characters"),
        ("huge.json", "huge.json, item 2, field 'prompt': prompt of 10,485,760 characters"),
        ("huge.parquet", "huge.parquet, row 2, field 'prompt': prompt of 10,485,760 characters"),
        # csv stops at its field limit; the value is in the second column
        ("huge.csv", "huge.csv, line 3, field 'prompt': a value of over 131,072 characters"),
    ],
)
def test_a_10mb_prompt_is_refused(tmp_path, name, message):
    huge = "x" * (10 * 1024 * 1024)
    path = tmp_path / name
    rows = [{"split": "train", "prompt": "fine"}, {"split": "train", "prompt": huge}]
    if path.suffix == ".jsonl":
        write_jsonl(path, rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif path.suffix == ".csv":
        write_csv(path, [["split", "prompt"], *([r["split"], r["prompt"]] for r in rows)])
    else:
        write_parquet(path, rows)
    with pytest.raises(ImportFileError) as info:
        read_prompts(path)
    assert str(info.value).endswith(f"{message} (limit 100,000)")


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
        # chosen / rejected repeating the prompt's turns (HuggingFaceH4/ultrafeedback_binarized)
        write_jsonl(tmp_path / "r.jsonl", [{"prompt": CHAT, **implicit}]),
    ):
        (row,) = read_preferences(path)
        assert (row.prompt.messages, row.prompt.text) == (CHAT, "hi?")
        assert (row.chosen, row.rejected) == ("hello", "go away")


def assistant(text):
    return {"role": "assistant", "content": text}


def test_seed_preferences_from_csv_cells_holding_json_messages(tmp_path):
    rows = [
        ["prompt", "chosen", "rejected"],
        ["q?", json.dumps([assistant("hello")]), json.dumps([assistant("go away")])],
        # no prompt: the turns the two conversations share (TRL's implicit prompt)
        ["", json.dumps([*CHAT, assistant("hi!")]), json.dumps([*CHAT, assistant("no")])],
        ["cite?", "[citation needed]", '["a", "list"]'],  # brackets, but not messages: text
    ]
    explicit, implicit, text = read_preferences(write_csv(tmp_path / "c.csv", rows))
    assert (explicit.prompt.text, explicit.prompt.messages) == ("q?", None)
    assert (explicit.chosen, explicit.rejected) == ("hello", "go away")
    assert (implicit.prompt.messages, implicit.chosen, implicit.rejected) == (CHAT, "hi!", "no")
    assert (text.chosen, text.rejected) == ("[citation needed]", '["a", "list"]')


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "field 'rejected': missing"),
        ({"chosen": "a", "rejected": "b"}, "field 'prompt': missing"),
        (
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            "field 'rejected': the same text as 'chosen'",
        ),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen': empty"),
        (
            {"prompt": "q", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]},
            "field 'rejected': the last message must be the assistant's",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "other"},
                    {"role": "assistant", "content": "b"},
                ],
            },
            "field 'rejected': differs from 'chosen' before the last reply (they share 0 turns",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": None},
            "field 'rejected': missing (the row has ['chosen', 'prompt'])",
        ),
        ({"prompt": "q", "chosen": "a\x00", "rejected": "b"}, "field 'chosen': a NUL character"),
        ({"prompt": "q\ud800", "chosen": "a", "rejected": "b"}, "field 'prompt': a lone surrogate"),
        (
            {"prompt": "q", "chosen": '[{"role": "bot", "content": "a"}]', "rejected": "b"},
            "field 'chosen[0].role': unknown role 'bot'",
        ),
        # one assistant reply is stored per response: other turns would be dropped
        (
            {"prompt": "q", "chosen": [assistant("a1"), assistant("a2")], "rejected": "b"},
            "field 'chosen': the turns before the reply (1) are not 'prompt'",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": [*CHAT, assistant("b")]},
            "field 'rejected': the turns before the reply (2) are not 'prompt'",
        ),
        (
            {
                "chosen": [
                    *CHAT,
                    assistant("a1"),
                    {"role": "user", "content": "more?"},
                    assistant("a2"),
                ],
                "rejected": [*CHAT, assistant("b")],
            },
            "field 'rejected': differs from 'chosen' before the last reply (they share 2 turns",
        ),
        (
            {"chosen": "a", "rejected": [*CHAT, assistant("b")]},
            "field 'prompt': missing, and 'chosen' is text, not a conversation",
        ),
    ],
)
def test_bad_seed_rows_name_the_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "y"}, row])
    with pytest.raises(ImportFileError) as info:
        read_preferences(path)
    assert f"p.jsonl, line 2, {message}" in str(info.value)


def test_gold_pairs_from_jsonl_and_csv_with_their_answers(tmp_path):
    from labeling.importing import read_gold
    from storage.models import Choice

    rows = [
        {"prompt": "hi?", "a": "hello", "b": "go away", "answer": "a"},
        {"prompt": CHAT, "a": [assistant("sure")], "b": "no", "answer": "Both bad"},
    ]
    items = read_gold(write_jsonl(tmp_path / "g.jsonl", rows))
    assert [(i.prompt.text, i.a, i.b, i.answer) for i in items] == [
        ("hi?", "hello", "go away", Choice.a),
        ("hi?", "sure", "no", Choice.both_bad),
    ]
    assert items[1].prompt.messages == CHAT
    csv_rows = [["q", "first", "second", "gold"], ["x?", "1", "2", "B"]]
    (item,) = read_gold(
        write_csv(tmp_path / "g.csv", csv_rows),
        prompt_field="q",
        a_field="first",
        b_field="second",
        answer_field="gold",
    )
    assert (item.a, item.b, item.answer) == ("1", "2", Choice.b)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "a": "x", "b": "y"}, "line 2, field 'answer': missing"),
        ({"prompt": "p", "a": "x", "b": "y", "answer": "left"}, "field 'answer': expected one of"),
        ({"prompt": "p", "a": "x", "b": "x", "answer": "a"}, "field 'b': the same text as 'a'"),
        ({"prompt": "", "a": "x", "b": "y", "answer": "a"}, "field 'prompt': missing"),
    ],
)
def test_bad_gold_rows_name_the_line_and_field(tmp_path, row, message):
    from labeling.importing import ImportFileError, read_gold

    good = {"prompt": "p", "a": "x", "b": "y", "answer": "a"}
    with pytest.raises(ImportFileError, match=message):
        read_gold(write_jsonl(tmp_path / "g.jsonl", [good, row]))
