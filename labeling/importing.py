"""Reading prompt files: every row is checked before anything is stored.

An error names the file, the line (1-based, as an editor shows it) and the field, and the caller
stores nothing: `read_prompts` returns the whole list or raises.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from storage.crud import PromptIn
from storage.models import Split

MAX_PROMPT_CHARS = 100_000


class ImportFileError(ValueError):
    """A bad import file: the message says file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, problem: str):
        where = (
            f"{path}" + (f", line {line}" if line else "") + (f", field {field!r}" if field else "")
        )
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = str(path), line, field, problem


def _check_text(value: Any, path: Path, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise ImportFileError(path, line, field, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ImportFileError(path, line, field, "empty prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise ImportFileError(
            path, line, field, f"prompt of {len(text):,} characters (limit {MAX_PROMPT_CHARS:,})"
        )
    return text


def _check_messages(value: Any, path: Path, line: int, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ImportFileError(path, line, field, "expected a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ImportFileError(path, line, f"{field}[{i}]", "expected {role, content}")
        if message["role"] not in {"system", "user", "assistant"}:
            raise ImportFileError(
                path, line, f"{field}[{i}].role", f"unknown role {message['role']!r}"
            )
        content = _check_text(message["content"], path, line, f"{field}[{i}].content")
        messages.append({"role": message["role"], "content": content})
    if messages[-1]["role"] != "user":
        raise ImportFileError(path, line, field, "the last message must be the user's")
    return messages


def _record(row: dict[str, Any], path: Path, line: int, text_field: str, source: str) -> PromptIn:
    split = row.get("split", Split.train.value) or Split.train.value
    if split not in {s.value for s in Split}:
        raise ImportFileError(path, line, "split", f"expected train or eval, got {split!r}")
    if text_field in row:
        text = _check_text(row[text_field], path, line, text_field)
        return PromptIn(text=text, source=source, split=Split(split))
    if "messages" in row:
        messages = _check_messages(row["messages"], path, line, "messages")
        return PromptIn(
            text=messages[-1]["content"], messages=messages, source=source, split=Split(split)
        )
    raise ImportFileError(path, line, text_field, f"missing (the row has {sorted(row)})")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ImportFileError(path, line, None, f"not UTF-8 text (byte {exc.start})") from None


def read_prompts(path: Path | str, *, text_field: str = "prompt") -> list[PromptIn]:
    """Parse a JSONL or CSV prompt file into records, or raise ImportFileError."""
    path = Path(path)
    if not path.is_file():
        raise ImportFileError(path, None, None, "no such file")
    suffix = path.suffix.lower()
    source = path.name
    records: list[PromptIn] = []
    if suffix in {".jsonl", ".json"}:
        for number, raw in enumerate(_read_text(path).splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ImportFileError(path, number, None, f"malformed JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ImportFileError(path, number, None, "expected a JSON object")
            records.append(_record(row, path, number, text_field, source))
    elif suffix == ".csv":
        reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
        if reader.fieldnames is None:
            raise ImportFileError(path, None, None, "empty file")
        if text_field not in reader.fieldnames:
            raise ImportFileError(path, 1, text_field, f"missing column (have {reader.fieldnames})")
        for row in reader:
            records.append(_record(dict(row), path, reader.line_num, text_field, source))
    else:
        raise ImportFileError(
            path, None, None, f"unknown format {suffix!r} (expected .jsonl or .csv)"
        )
    if not records:
        raise ImportFileError(path, None, None, "empty file: no prompts")
    return records
