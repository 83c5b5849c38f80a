"""Reading prompt and seed-preference files: every row is checked before anything is stored.

Formats: JSONL (`.jsonl`, `.json`), CSV (`.csv`), Parquet (`.parquet`), and a Hugging Face
dataset directory saved with `save_to_disk` (a Dataset, or a DatasetDict whose splits are all
read; rows of a `test`, `validation` or `eval` split become eval prompts).

An error names the file, the line (1-based, as an editor shows it; for Parquet and dataset
directories the row) and the field, and the caller stores nothing: the readers return the whole
list or raise ImportFileError.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage.crud import PromptIn, prompt_hash
from storage.models import Split
from storage.preferences import SeedPreferenceIn

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


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, number, None, f"malformed JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ImportFileError(path, number, None, "expected a JSON object")
        yield number, row


def _csv_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True), strict=True)
    if reader.fieldnames is None:
        raise ImportFileError(path, None, None, "empty file")
    for name in required:
        if name not in reader.fieldnames:
            raise ImportFileError(path, 1, name, f"missing column (have {reader.fieldnames})")
    try:
        for row in reader:
            if None in row:
                raise ImportFileError(path, reader.line_num, None, "more values than columns")
            yield reader.line_num, dict(row)
    except csv.Error as exc:
        problem = f"malformed CSV: {exc}"
        if "field limit" in str(exc):
            problem = (
                f"a value longer than {csv.field_size_limit():,} characters "
                f"(prompts are limited to {MAX_PROMPT_CHARS:,})"
            )
        raise ImportFileError(path, reader.line_num + 1, None, problem) from None


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
        for row in part:
            number += 1
            if split_name is not None and "split" not in row:
                row = {**row, "split": "eval" if split_name in EVAL_SPLIT_NAMES else "train"}
            yield number, row


def _rows(path: Path, required: list[str]) -> tuple[_Where, Iterator[tuple[int, dict]]]:
    if path.is_dir():
        return _Where(path, "row"), _dataset_dir_rows(path)
    if not path.is_file():
        raise ImportFileError(path, None, None, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        return _Where(path, "line"), _jsonl_rows(path)
    if suffix == ".csv":
        return _Where(path, "line"), _csv_rows(path, required)
    if suffix == ".parquet":
        return _Where(path, "row"), _parquet_rows(path)
    raise ImportFileError(
        path,
        None,
        None,
        f"unknown format {suffix!r} (expected .jsonl, .csv, .parquet or a dataset directory)",
    )


# checking fields


def _check_text(value: Any, where: _Where, line: int, field: str, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise where.error(line, field, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise where.error(line, field, f"empty {what}")
    if len(text) > limit:
        raise where.error(line, field, f"{what} of {len(text):,} characters (limit {limit:,})")
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


def _split(row: dict[str, Any], where: _Where, line: int) -> Split | None:
    split = row.get("split")
    if split in (None, ""):
        return None
    if split not in {s.value for s in Split}:
        raise where.error(line, "split", f"expected train or eval, got {split!r}")
    return Split(split)


def _prompt(
    row: dict[str, Any], where: _Where, line: int, text_field: str, messages_field: str
) -> PromptIn:
    source = where.path.name
    split = _split(row, where, line) or Split.train
    if row.get(text_field) is not None:
        text = _check_text(row[text_field], where, line, text_field, MAX_PROMPT_CHARS, "prompt")
        return PromptIn(text=text, source=source, split=split)
    if row.get(messages_field) is not None:
        messages = _check_messages(row[messages_field], where, line, messages_field)
        if messages[-1]["role"] != "user":
            raise where.error(line, messages_field, "the last message must be the user's")
        return PromptIn(text=messages[-1]["content"], messages=messages, source=source, split=split)
    raise where.error(
        line, text_field, f"missing (nor {messages_field!r}; the row has {sorted(row)})"
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
    if not 0.0 <= eval_share < 1.0:
        raise ValueError(f"eval_share must be within [0, 1), got {eval_share}")
    path = Path(path)
    where, rows = _rows(path, required=[text_field])
    records: list[PromptIn] = []
    unsplit: list[int] = []  # rows without their own split: the holdout draws from these
    for line, row in rows:
        records.append(_prompt(row, where, line, text_field, messages_field))
        if _split(row, where, line) is None:
            unsplit.append(len(records) - 1)
    if not records:
        raise ImportFileError(path, None, None, "empty file: no prompts")
    return hold_out(records, unsplit, eval_share)


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
    """A response as text, plus the messages before it when given as a conversation."""
    if isinstance(value, str):
        return _check_text(value, where, line, field, MAX_RESPONSE_CHARS, "response"), None
    messages = _check_messages(value, where, line, field)
    if messages[-1]["role"] != "assistant":
        raise where.error(line, field, "the last message must be the assistant's")
    content = messages[-1]["content"]
    if len(content) > MAX_RESPONSE_CHARS:
        raise where.error(
            line, field, f"response of {len(content):,} characters (limit {MAX_RESPONSE_CHARS:,})"
        )
    return content, messages[:-1]


def _preference(
    row: dict[str, Any],
    where: _Where,
    line: int,
    fields: tuple[str, str, str],
) -> SeedPreferenceIn:
    prompt_field, chosen_field, rejected_field = fields
    for name in (chosen_field, rejected_field):
        if row.get(name) is None:
            raise where.error(line, name, f"missing (the row has {sorted(row)})")
    chosen, chosen_context = _completion(row[chosen_field], where, line, chosen_field)
    rejected, rejected_context = _completion(row[rejected_field], where, line, rejected_field)
    source, split = where.path.name, _split(row, where, line) or Split.train
    if row.get(prompt_field) is not None:
        value = row[prompt_field]
        if isinstance(value, str):
            text = _check_text(value, where, line, prompt_field, MAX_PROMPT_CHARS, "prompt")
            prompt = PromptIn(text=text, source=source, split=split)
        else:
            messages = _check_messages(value, where, line, prompt_field)
            if messages[-1]["role"] != "user":
                raise where.error(line, prompt_field, "the last message must be the user's")
            prompt = PromptIn(
                text=messages[-1]["content"], messages=messages, source=source, split=split
            )
    elif chosen_context:
        # TRL's implicit prompt: both conversations share everything but the last reply
        if chosen_context != rejected_context:
            raise where.error(
                line, rejected_field, f"differs from {chosen_field!r} before the last reply"
            )
        if chosen_context[-1]["role"] != "user":
            raise where.error(line, chosen_field, "the reply must follow the user's message")
        prompt = PromptIn(
            text=chosen_context[-1]["content"],
            messages=chosen_context,
            source=source,
            split=split,
        )
    else:
        raise where.error(line, prompt_field, f"missing (the row has {sorted(row)})")
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
    `rejected` as conversations ending on the assistant's reply; without `prompt`, the prompt is
    what the two conversations share before their last reply (TRL's implicit prompt)."""
    path = Path(path)
    fields = (prompt_field, chosen_field, rejected_field)
    where, rows = _rows(path, required=[chosen_field, rejected_field])
    records = [_preference(row, where, line, fields) for line, row in rows]
    if not records:
        raise ImportFileError(path, None, None, "empty file: no preferences")
    return records
