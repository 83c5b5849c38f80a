"""Reading prompt, seed-preference and gold-pair files: every row is checked before anything is
stored.

Formats: JSONL (`.jsonl`, `.json`; a `.json` file may also be one JSON array of objects), CSV
(`.csv`), Parquet (`.parquet`), and a Hugging Face dataset directory saved with `save_to_disk` (a
Dataset, or a DatasetDict whose splits are all read; rows of a `test`, `validation` or `eval`
split become eval prompts, rows of other splits count as rows without a split).

An error names the file, the line (1-based, as an editor shows it, counting "\n" only; for
Parquet and dataset directories the row, for a JSON array the item) and the field, and the caller
stores nothing: the readers return the whole list or raise ImportFileError.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage.crud import PromptIn, prompt_hash
from storage.gold import GoldIn
from storage.models import Choice, Split
from storage.preferences import SeedPreferenceIn
from storage.text import nul_at

MAX_PROMPT_CHARS = 100_000
MAX_RESPONSE_CHARS = 100_000
EVAL_SPLIT_NAMES = {"test", "validation", "valid", "eval", "evaluation"}
ROLES = {"system", "user", "assistant"}


class ImportFileError(ValueError):
    """A bad import file: the message says file, line (or row) and field."""

    def __init__(
        self,
        path: Path | str,
        line: int | None,
        field: str | None,
        problem: str,
        *,
        unit: str = "line",
    ):
        where = (
            f"{path}"
            + (f", {unit} {line}" if line else "")
            + (f", field {field!r}" if field else "")
        )
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        self.unit = unit


class _Where:
    """Where a row came from, for error messages."""

    def __init__(self, path: Path, unit: str):
        self.path, self.unit = path, unit

    def error(self, line: int | None, field: str | None, problem: str) -> ImportFileError:
        return ImportFileError(self.path, line, field, problem, unit=self.unit)


# reading rows


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFileError(path, line, None, f"not UTF-8 text (byte {exc.start})") from None


def _lines(text: str) -> list[str]:
    """The lines of `text`, each with its ending, ended by "\\n" only (a "\\r" before it stays).

    Not str.splitlines: it also breaks on U+2028, U+0085, \\x0c and others, which JSON strings
    (json.dumps(ensure_ascii=False), our own export) and CSV cells may hold raw."""
    return io.StringIO(text, newline="\n").readlines()


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(_lines(text), start=1):
        if not raw.strip(" \t\r\n"):  # JSON's whitespace; json.loads ignores it around a value
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, number, None, f"malformed JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ImportFileError(path, number, None, "expected a JSON object")
        yield number, row


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(path, exc.lineno, None, f"malformed JSON: {exc.msg}") from None
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ImportFileError(path, number, None, "expected a JSON object", unit="item")
        yield number, item


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its values) for each non-blank record; the first is the
    header. Only "\\n" or "\\r\\n" end a record, so the line is the one an editor shows."""
    lines = _lines(text)
    reader = csv.reader(lines, strict=True)
    header: list[str] = []
    while True:
        start = reader.line_num + 1  # line_num counts the lines read so far
        try:
            values = next(reader, None)
        except csv.Error as exc:
            raise _csv_error(path, lines, start, reader.line_num, header, exc) from None
        if values is None:
            return
        if values:  # a blank line reads as []
            header = header or values
            yield start, values


def _csv_error(
    path: Path, lines: list[str], start: int, end: int, header: list[str], exc: csv.Error
) -> ImportFileError:
    if "field limit" not in str(exc):
        reach = f" (reading the row on to line {end})" if end > start else ""
        return ImportFileError(path, start, None, f"malformed CSV: {exc}{reach}")
    limit = csv.field_size_limit()
    column = _oversized_column(itertools.islice(lines, start - 1, None), limit)
    field = header[column] if column is not None and column < len(header) else None
    problem = f"a value of over {limit:,} characters (limit {MAX_PROMPT_CHARS:,})"
    return ImportFileError(path, start, field, problem)


def _oversized_column(lines: Iterable[str], limit: int) -> int | None:
    """The index of the first value over `limit` characters in the CSV record these lines start
    (csv's error does not say which). Counts as csv does: a quote opens or closes quoting (a
    doubled one does both), a comma outside quotes ends a value, a newline outside ends the
    record."""
    column, length, quoted = 0, 0, False
    for char in itertools.chain.from_iterable(lines):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            column, length = column + 1, 0
        elif char == "\n" and not quoted:
            return None
        else:
            length += 1
            if length > limit:
                return column
    return None


def _check_header(path: Path, line: int, header: list[str], required: list[tuple[str, ...]]):
    """Each group of `required` names columns of which the file must have at least one."""
    for name in header:
        if header.count(name) > 1:
            raise ImportFileError(path, line, name, "the header names this column twice")
    for names in required:
        if not any(name in header for name in names):
            others = "".join(f"nor {name!r}; " for name in names[1:])
            raise ImportFileError(
                path, line, names[0], f"missing column ({others}the header has {header})"
            )


def _csv_rows(
    path: Path, text: str, required: list[tuple[str, ...]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    records = _csv_records(path, text)
    first = next(records, None)
    if first is None:
        raise ImportFileError(path, None, None, "empty file")
    header_line, header = first
    _check_header(path, header_line, header, required)
    for line, values in records:
        if len(values) != len(header):
            raise ImportFileError(
                path,
                line,
                None,
                f"{_plural(len(values), 'value')}, but the header (line {header_line}) has "
                f"{_plural(len(header), 'column')}",
            )
        yield line, dict(zip(header, values, strict=True))


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        number = 0
        for batch in parquet.iter_batches(batch_size=1000):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as exc:
        raise ImportFileError(path, None, None, f"not a readable Parquet file: {exc}") from None


def _dataset_dir_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ImportFileError(
            path, None, None, f"not a dataset directory saved with save_to_disk: {exc}"
        ) from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    number = 0
    for split_name, part in parts:
        # A train split says nothing a plain Dataset would not: its rows stay without a split,
        # so --eval-share can hold some out.
        held_out = split_name in EVAL_SPLIT_NAMES
        for row in part:
            number += 1
            if held_out and row.get("split") in (None, ""):
                row = {**row, "split": Split.eval.value}
            yield number, row


def _rows(path: Path, required: list[tuple[str, ...]]) -> tuple[_Where, Iterator[tuple[int, dict]]]:
    """`required`: for CSV, groups of columns of which the header must have one each."""
    if path.is_dir():
        return _Where(path, "row"), _dataset_dir_rows(path)
    if not path.is_file():
        raise ImportFileError(path, None, None, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        text = _read_text(path)
        if suffix == ".json" and re.match(r"\s*\[", text):
            return _Where(path, "item"), _json_array_rows(path, text)
        return _Where(path, "line"), _jsonl_rows(path, text)
    if suffix == ".csv":
        return _Where(path, "line"), _csv_rows(path, _read_text(path), required)
    if suffix == ".parquet":
        return _Where(path, "row"), _parquet_rows(path)
    raise ImportFileError(
        path,
        None,
        None,
        f"unknown format {suffix!r} (expected .jsonl, .json, .csv, .parquet or a dataset "
        "directory)",
    )


# checking fields


def _blank(value: Any) -> bool:
    """No value: None (JSON null, a missing Parquet value) or a blank string (an empty CSV cell)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _filled(row: dict[str, Any]) -> list[str]:
    """The fields of `row` that hold a value, for 'missing' messages."""
    return sorted(name for name, value in row.items() if not _blank(value))


def _check_text(value: Any, where: _Where, line: int, field: str, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise where.error(line, field, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise where.error(line, field, f"empty {what}")
    if len(text) > limit:
        raise where.error(line, field, f"{what} of {len(text):,} characters (limit {limit:,})")
    at = nul_at(text)
    if at is not None:
        raise where.error(
            line,
            field,
            f"a NUL character (\\x00) at character {at + 1:,}: PostgreSQL cannot store it",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from JSON's "\ud800"
        code = ord(text[exc.start])
        raise where.error(
            line,
            field,
            f"a lone surrogate (\\u{code:04x}) at character {exc.start + 1:,}: not valid Unicode",
        ) from None
    return text


def _check_messages(value: Any, where: _Where, line: int, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # CSV cells, or JSON stored as text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise where.error(line, field, "expected a list of messages") from None
    if not isinstance(value, list) or not value:
        raise where.error(line, field, "expected a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise where.error(line, f"{field}[{i}]", "expected {role, content}")
        if message["role"] not in ROLES:
            raise where.error(line, f"{field}[{i}].role", f"unknown role {message['role']!r}")
        content = _check_text(
            message["content"], where, line, f"{field}[{i}].content", MAX_PROMPT_CHARS, "message"
        )
        messages.append({"role": message["role"], "content": content})
    return messages


def _as_messages(value: Any) -> Any:
    """`value` as chat messages if it is a conversation, else None (plain text).

    A list is a conversation; so is a string holding, as JSON, a list of objects that each have
    a role and content (how a CSV cell or a text column carries one). Any other string is text."""
    if not isinstance(value, str):
        return value
    if not value.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    is_chat = isinstance(parsed, list) and bool(parsed)
    is_chat = is_chat and all(
        isinstance(m, dict) and {"role", "content"} <= m.keys() for m in parsed
    )
    return parsed if is_chat else None


def _split(row: dict[str, Any], where: _Where, line: int) -> Split | None:
    split = row.get("split")
    if split in (None, ""):
        return None
    if split not in {s.value for s in Split}:
        raise where.error(line, "split", f"expected train or eval, got {split!r}")
    return Split(split)


def _chat_prompt(
    value: Any, where: _Where, line: int, field: str, source: str, split: Split
) -> PromptIn:
    messages = _check_messages(value, where, line, field)
    if messages[-1]["role"] != "user":
        raise where.error(line, field, "the last message must be the user's")
    return PromptIn(text=messages[-1]["content"], messages=messages, source=source, split=split)


def _prompt(
    row: dict[str, Any], where: _Where, line: int, text_field: str, messages_field: str
) -> PromptIn:
    source = where.path.name
    split = _split(row, where, line) or Split.train
    text, messages = row.get(text_field), row.get(messages_field)
    if _blank(text) and not _blank(messages):
        return _chat_prompt(messages, where, line, messages_field, source, split)
    if text is not None:
        text = _check_text(text, where, line, text_field, MAX_PROMPT_CHARS, "prompt")
        return PromptIn(text=text, source=source, split=split)
    raise where.error(
        line, text_field, f"missing (nor {messages_field!r}; the row has {_filled(row)})"
    )


# prompts


def read_prompts(
    path: Path | str,
    *,
    text_field: str = "prompt",
    messages_field: str = "messages",
    eval_share: float = 0.0,
) -> list[PromptIn]:
    """Parse a prompt file or dataset directory into records, or raise ImportFileError.

    A row gives its prompt as text (`text_field`) or chat messages (`messages_field`, ending on
    the user's turn). `eval_share` holds that share of the rows without an explicit `split` out
    as eval prompts, chosen by content hash: the same file always gives the same split."""
    rows = read_prompt_rows(
        path, text_field=text_field, messages_field=messages_field, eval_share=eval_share
    )
    return [record for _, record in rows]


def read_prompt_rows(
    path: Path | str,
    *,
    text_field: str = "prompt",
    messages_field: str = "messages",
    eval_share: float = 0.0,
) -> list[tuple[str, PromptIn]]:
    """`read_prompts` with where each record is in the file ("line 4", "row 12"), for messages
    about single prompts."""
    if not 0.0 <= eval_share < 1.0:
        raise ValueError(f"eval_share must be within [0, 1), got {eval_share}")
    path = Path(path)
    where, rows = _rows(path, required=[(text_field, messages_field)])
    records: list[PromptIn] = []
    places: list[str] = []
    unsplit: list[int] = []  # rows without their own split: the holdout draws from these
    for line, row in rows:
        records.append(_prompt(row, where, line, text_field, messages_field))
        places.append(f"{where.unit} {line}")
        if _split(row, where, line) is None:
            unsplit.append(len(records) - 1)
    if not records:
        raise ImportFileError(path, None, None, "empty file: no prompts")
    return list(zip(places, hold_out(records, unsplit, eval_share), strict=True))


def hold_out(records: list[PromptIn], candidates: list[int], share: float) -> list[PromptIn]:
    """Mark round(share * len(candidates)) of `records[candidates]` as eval: those whose salted
    content hash sorts first. Deterministic, and independent of the rows' order."""
    n_eval = round(share * len(candidates))
    if n_eval == 0:
        return records

    def rank(i: int) -> str:
        key = prompt_hash(records[i].text, records[i].messages)
        return hashlib.sha256(f"prefloop-holdout:{key}".encode()).hexdigest()

    chosen = set(sorted(candidates, key=rank)[:n_eval])
    return [replace(r, split=Split.eval) if i in chosen else r for i, r in enumerate(records)]


# seed preferences


def _completion(value: Any, where: _Where, line: int, field: str) -> tuple[str, list | None]:
    """A response as text, plus the turns before it when given as a conversation."""
    conversation = _as_messages(value)
    if conversation is None:
        return _check_text(value, where, line, field, MAX_RESPONSE_CHARS, "response"), None
    messages = _check_messages(conversation, where, line, field)
    if messages[-1]["role"] != "assistant":
        raise where.error(line, field, "the last message must be the assistant's")
    content = messages[-1]["content"]
    if len(content) > MAX_RESPONSE_CHARS:
        raise where.error(
            line, field, f"response of {len(content):,} characters (limit {MAX_RESPONSE_CHARS:,})"
        )
    return content, messages[:-1]


def _given_prompt(
    value: Any, where: _Where, line: int, field: str, source: str, split: Split
) -> PromptIn:
    conversation = _as_messages(value)
    if conversation is None:
        text = _check_text(value, where, line, field, MAX_PROMPT_CHARS, "prompt")
        return PromptIn(text=text, source=source, split=split)
    return _chat_prompt(conversation, where, line, field, source, split)


def _check_context(
    context: list | None, prompt: PromptIn, where: _Where, line: int, fields: tuple[str, str]
) -> None:
    """With a prompt given, a conversational response is one assistant message, or the prompt's
    own turns and then one (as in HuggingFaceH4/ultrafeedback_binarized). Any other turns would
    be dropped: refuse them."""
    field, prompt_field = fields
    if not context or context == (prompt.messages or [{"role": "user", "content": prompt.text}]):
        return
    raise where.error(
        line,
        field,
        f"the turns before the reply ({len(context)}) are not {prompt_field!r}; expected one "
        f"assistant message, or the turns of {prompt_field!r} and then one",
    )


def _shared_turns(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _implicit_prompt(
    contexts: tuple[list | None, list | None],
    where: _Where,
    line: int,
    fields: tuple[str, str, str],
    split: Split,
) -> PromptIn:
    """TRL's implicit prompt: the turns the two conversations share. prefloop stores one reply
    per response, so all that follows the shared turns must be one assistant message each."""
    prompt_field, chosen_field, rejected_field = fields
    chosen_context, rejected_context = contexts
    if chosen_context is None or rejected_context is None:
        text_field = chosen_field if chosen_context is None else rejected_field
        raise where.error(
            line, prompt_field, f"missing, and {text_field!r} is text, not a conversation"
        )
    if chosen_context != rejected_context:
        shared = _shared_turns(chosen_context, rejected_context)
        raise where.error(
            line,
            rejected_field,
            f"differs from {chosen_field!r} before the last reply (they share "
            f"{_plural(shared, 'turn')}; expected the shared turns, then one assistant message "
            "each)",
        )
    if chosen_context[-1]["role"] != "user":
        raise where.error(line, chosen_field, "the reply must follow the user's message")
    return PromptIn(
        text=chosen_context[-1]["content"],
        messages=chosen_context,
        source=where.path.name,
        split=split,
    )


def _preference(
    row: dict[str, Any],
    where: _Where,
    line: int,
    fields: tuple[str, str, str],
) -> SeedPreferenceIn:
    prompt_field, chosen_field, rejected_field = fields
    for name in (chosen_field, rejected_field):
        if row.get(name) is None:
            raise where.error(line, name, f"missing (the row has {_filled(row)})")
    chosen, chosen_context = _completion(row[chosen_field], where, line, chosen_field)
    rejected, rejected_context = _completion(row[rejected_field], where, line, rejected_field)
    split = _split(row, where, line) or Split.train
    value = row.get(prompt_field)
    if _blank(value) and (chosen_context or rejected_context):
        prompt = _implicit_prompt((chosen_context, rejected_context), where, line, fields, split)
    elif value is not None:
        prompt = _given_prompt(value, where, line, prompt_field, where.path.name, split)
        _check_context(chosen_context, prompt, where, line, (chosen_field, prompt_field))
        _check_context(rejected_context, prompt, where, line, (rejected_field, prompt_field))
    else:
        raise where.error(line, prompt_field, f"missing (the row has {_filled(row)})")
    if chosen == rejected:
        raise where.error(line, rejected_field, f"the same text as {chosen_field!r}")
    return SeedPreferenceIn(prompt=prompt, chosen=chosen, rejected=rejected)


def read_preferences(
    path: Path | str,
    *,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> list[SeedPreferenceIn]:
    """Parse a preference dataset (prompt / chosen / rejected), or raise ImportFileError.

    Standard rows hold strings. Conversational rows hold `prompt` as messages and `chosen` /
    `rejected` as one assistant message each (or the prompt's turns, then one); without `prompt`,
    `chosen` / `rejected` are whole conversations, and the prompt is the turns they share before
    their last reply (TRL's implicit prompt). Messages are a list of {role, content}, or a string
    holding such a list as JSON (a CSV cell): a string that parses so is a conversation, any other
    string is text."""
    path = Path(path)
    fields = (prompt_field, chosen_field, rejected_field)
    where, rows = _rows(path, required=[(chosen_field,), (rejected_field,)])
    records = [_preference(row, where, line, fields) for line, row in rows]
    if not records:
        raise ImportFileError(path, None, None, "empty file: no preferences")
    return records


GOLD_ANSWERS = {"a": Choice.a, "b": Choice.b, "tie": Choice.tie, "both_bad": Choice.both_bad}


def _gold(row: dict[str, Any], where: _Where, line: int, fields: tuple[str, ...]) -> GoldIn:
    prompt_field, a_field, b_field, answer_field = fields
    for name in (prompt_field, a_field, b_field, answer_field):
        if _blank(row.get(name)):
            raise where.error(line, name, f"missing (the row has {_filled(row)})")
    split = _split(row, where, line) or Split.train
    prompt = _given_prompt(row[prompt_field], where, line, prompt_field, where.path.name, split)
    a, a_context = _completion(row[a_field], where, line, a_field)
    b, b_context = _completion(row[b_field], where, line, b_field)
    _check_context(a_context, prompt, where, line, (a_field, prompt_field))
    _check_context(b_context, prompt, where, line, (b_field, prompt_field))
    if a == b:
        raise where.error(line, b_field, f"the same text as {a_field!r}")
    answer = row[answer_field]
    key = answer.strip().lower().replace(" ", "_") if isinstance(answer, str) else None
    if key not in GOLD_ANSWERS:
        raise where.error(
            line, answer_field, f"expected one of {', '.join(GOLD_ANSWERS)} (got {answer!r})"
        )
    return GoldIn(prompt=prompt, a=a, b=b, answer=GOLD_ANSWERS[key])


def read_gold(
    path: Path | str,
    *,
    prompt_field: str = "prompt",
    a_field: str = "a",
    b_field: str = "b",
    answer_field: str = "answer",
) -> list[GoldIn]:
    """Parse a gold pair file (prompt / a / b / answer), or raise ImportFileError. `answer` is
    a, b, tie or both_bad (the better response, as a labeler would answer); the prompt is text or
    chat messages, and a and b are text or one assistant message each, as in a preference file."""
    path = Path(path)
    fields = (prompt_field, a_field, b_field, answer_field)
    where, rows = _rows(path, required=[(prompt_field,), (a_field,), (b_field,), (answer_field,)])
    records = [_gold(row, where, line, fields) for line, row in rows]
    if not records:
        raise ImportFileError(path, None, None, "empty file: no gold pairs")
    return records
