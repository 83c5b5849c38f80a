"""Evaluation votes out: one row per vote on an evaluation pair, as JSONL or Parquet (both load
with `datasets`).

Columns: `prompt` (text), `messages` (a chat prompt's turns, or null), `response_a`,
`response_b`, `version_a`, `version_b` (the policy versions that wrote them), `choice` (a, b, tie
or both_bad, about the pair's a and b, whatever order the annotator saw), `winner` (the winning
version, null for a tie or both bad), `annotator`, `seconds`, `created_at` (ISO 8601, UTC),
`pair_id`, `label_id`. These are ratings of versions, not preference data: the DPO export
(labeling/export.py) never holds them.

Rows stream from the database in keyset pages and are written in row groups; the file is written
beside its destination and renamed into place; an export with no vote is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from labeling.export import (
    MEDIA_TYPES,
    ROWS_PER_GROUP,
    ExportError,
    ExportFormat,
    chunks,
    write_jsonl,
)
from storage import evaluation
from storage.db import transaction

FORMATS = (ExportFormat.jsonl, ExportFormat.parquet)
COLUMNS = (
    "prompt",
    "messages",
    "response_a",
    "response_b",
    "version_a",
    "version_b",
    "choice",
    "winner",
    "annotator",
    "seconds",
    "created_at",
    "pair_id",
    "label_id",
)


@dataclass(frozen=True)
class VoteExport:
    path: Path
    format: ExportFormat
    rows: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def vote_record(vote: evaluation.Vote) -> dict[str, Any]:
    winner = {"a": vote.version_a, "b": vote.version_b}.get(vote.choice)
    return {
        "prompt": vote.prompt,
        "messages": vote.messages,
        "response_a": vote.response_a,
        "response_b": vote.response_b,
        "version_a": vote.version_a,
        "version_b": vote.version_b,
        "choice": vote.choice,
        "winner": winner,
        "annotator": vote.annotator,
        "seconds": vote.seconds,
        "created_at": vote.created_at.isoformat(),
        "pair_id": vote.pair_id,
        "label_id": vote.label_id,
    }


def _schema():
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    types = {
        "messages": messages,
        "version_a": pa.int64(),
        "version_b": pa.int64(),
        "winner": pa.int64(),
        "seconds": pa.float64(),
        "pair_id": pa.int64(),
        "label_id": pa.int64(),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])


def _write_parquet(records, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for group in chunks(records, ROWS_PER_GROUP):
            columns = {name: [r[name] for r in group] for name in COLUMNS}
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            n += len(group)
    return n


def export_votes(*, engine: Engine, out: Path | str, format: ExportFormat | str) -> VoteExport:
    """Write every evaluation vote to `out` (jsonl or parquet); returns how many."""
    out, format = Path(out), ExportFormat(format)
    if format not in FORMATS:
        raise ExportError(f"format {format}: evaluation votes export as jsonl or parquet")
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name for {format} output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        partial = Path(tmp) / "votes"
        with transaction(engine, readonly=True) as session:
            records = (vote_record(v) for v in evaluation.iter_votes(session=session))
            if format == ExportFormat.jsonl:
                n = write_jsonl(records, partial)
            else:
                n = _write_parquet(records, partial)
        if n == 0:
            raise ExportError("nothing to export: no evaluation votes yet")
        os.replace(partial, out)
    return VoteExport(path=out, format=format, rows=n)


def export_votes_file(
    *, engine: Engine, format: ExportFormat | str, directory: Path | str | None = None
) -> VoteExport:
    """Export into a new temporary directory, for a download; the caller removes
    `result.path.parent` when done."""
    format = ExportFormat(format)
    tmp = Path(tempfile.mkdtemp(prefix="prefloop-votes-", dir=directory))
    try:
        return export_votes(engine=engine, out=tmp / f"evaluation-votes.{format}", format=format)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
