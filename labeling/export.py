"""Preference datasets out: JSONL, Parquet or a Hugging Face dataset directory, as TRL's
DPOTrainer reads them.

Two layouts, TRL's names for them:
- standard: `prompt`, `chosen`, `rejected` are strings (for a chat prompt, `prompt` is its last
  user turn; use the conversational layout to keep the whole conversation);
- conversational: `prompt` is a list of {role, content} messages, `chosen` and `rejected` are
  one assistant message each.
Metadata columns follow: pair_id, iteration, policy_version, strategy, source, annotators,
agreement, proxy_p (see `storage.preferences.PreferenceRow`), and one `criterion_<name>` column
per criterion of `labeling.criteria` (chosen, rejected, tie, or empty).

Rows stream from the database in keyset pages and are written in row groups (an hf directory is
then filled from the Parquet file one row group at a time), so memory stays flat however many
there are. The output appears whole or not at all: it is written beside its
destination and renamed into place. An export that would be empty is refused (ExportError), since
`datasets` cannot load an empty Parquet file and an empty file is nearly always a wrong filter.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Split
from storage.preferences import ALL_SOURCES, PreferenceRow, iter_preferences

ROWS_PER_GROUP = 10_000  # Parquet row group: the most rows held in memory at once
MAX_SHARD_BYTES = 500 * 10**6  # an hf shard file, as save_to_disk's max_shard_size="500MB"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"
    hf = "hf"  # a `datasets` save_to_disk directory: datasets.load_from_disk(path)


class Layout(StrEnum):
    standard = "standard"
    conversational = "conversational"


class ExportError(ValueError):
    pass


class HubPushError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportFilters:
    iterations: list[int] | None = None  # iteration k's; None: all, seed data included
    sources: tuple[str, ...] = ALL_SOURCES  # human, proxy, seed
    min_agreement: float = 0.0
    annotators: list[str] | None = None  # only these users' labels count
    split: Split | None = None  # the prompt's split
    # The annotators this rule flags (gold accuracy) do not count: `GoldRule.filtering` of the
    # labeling settings; None: everyone counts.
    gold: GoldRule | None = None
    # Decide each pair by its labels' judgments on this criterion instead of the overall choice.
    criterion: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(f"min_agreement must be within [0, 1], got {self.min_agreement}")

    def describe(self) -> str:
        """The filters that narrow the export, for a person: "iteration 2; sources human"."""
        said = []
        if self.iterations is not None:
            said.append(f"iteration {', '.join(map(str, self.iterations))}")
        if set(self.sources) != set(ALL_SOURCES):
            said.append(f"sources {', '.join(self.sources)}")
        if self.min_agreement:
            said.append(f"agreement at least {self.min_agreement:g}")
        if self.annotators is not None:
            said.append(f"annotators {', '.join(self.annotators)}")
        if self.split is not None:
            said.append(f"{self.split} prompts")
        if self.criterion is not None:
            said.append(f"criterion {self.criterion}")
        if self.gold is not None:
            said.append("annotators flagged by their gold accuracy left out")
        return "; ".join(said) or "none"

    def as_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "sources": list(self.sources),
            "min_agreement": self.min_agreement,
            "annotators": self.annotators,
            "split": None if self.split is None else str(self.split),
            "gold_filter": None if self.gold is None else self.gold.as_dict(),
            "criterion": self.criterion,
        }


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: ExportFormat
    layout: Layout
    rows: int
    filters: dict[str, Any] = field(default_factory=dict)


def preference_record(
    row: PreferenceRow, layout: Layout, criteria: Sequence[str] = ()
) -> dict[str, Any]:
    if layout == Layout.conversational:
        prompt: Any = row.messages or [{"role": "user", "content": row.prompt}]
        chosen: Any = [{"role": "assistant", "content": row.chosen}]
        rejected: Any = [{"role": "assistant", "content": row.rejected}]
    else:
        prompt, chosen, rejected = row.prompt, row.chosen, row.rejected
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "pair_id": row.pair_id,
        "iteration": row.iteration,
        "policy_version": row.policy_version,
        "strategy": row.strategy,
        "source": row.source,
        "annotators": list(row.annotators),
        "agreement": row.agreement,
        "proxy_p": row.proxy_p,
        **{f"criterion_{name}": row.criteria.get(name) for name in criteria},
    }


def arrow_schema(layout: Layout, criteria: Sequence[str] = ()):
    import pyarrow as pa

    if layout == Layout.conversational:
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        text_types = (messages, messages, messages)
    else:
        text_types = (pa.string(), pa.string(), pa.string())
    return pa.schema(
        [
            ("prompt", text_types[0]),
            ("chosen", text_types[1]),
            ("rejected", text_types[2]),
            ("pair_id", pa.int64()),
            ("iteration", pa.int64()),
            ("policy_version", pa.int64()),
            ("strategy", pa.string()),
            ("source", pa.string()),
            ("annotators", pa.list_(pa.string())),
            ("agreement", pa.float64()),
            ("proxy_p", pa.float64()),
            *((f"criterion_{name}", pa.string()) for name in criteria),
        ]
    )


def export_preferences(
    *,
    engine: Engine,
    out: Path | str,
    format: ExportFormat | str,
    layout: Layout | str = Layout.standard,
    filters: ExportFilters | None = None,
    criteria: Sequence[str] = (),
    batch_size: int = 1000,
) -> ExportResult:
    """Write the preferences selected by `filters` to `out`, with a column per criterion of
    `criteria` (`labeling.criteria`); returns how many rows."""
    out = Path(out)
    format, layout = ExportFormat(format), Layout(layout)
    filters = filters or ExportFilters()
    if format == ExportFormat.hf:
        _check_replaceable_dir(out)
    elif out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name for {format} output")
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        partial = Path(tmp) / "export"
        with transaction(engine, readonly=True) as session:
            rows = iter_preferences(
                session=session,
                iterations=filters.iterations,
                sources=filters.sources,
                min_agreement=filters.min_agreement,
                annotators=filters.annotators,
                split=filters.split,
                gold=filters.gold,
                criterion=filters.criterion,
                batch_size=batch_size,
            )
            if format == ExportFormat.jsonl:
                records = (preference_record(row, layout, criteria) for row in rows)
                n = write_jsonl(records, partial)
            else:
                n = write_parquet(rows, partial, layout, criteria)
        if n == 0:
            raise ExportError(
                f"nothing to export: no decided pairs match the filters ({filters.describe()})"
            )
        if format == ExportFormat.hf:
            _parquet_to_dataset_dir(partial, Path(tmp) / "dataset")
            if out.exists():
                shutil.rmtree(out)
            os.replace(Path(tmp) / "dataset", out)
        else:
            os.replace(partial, out)
    return ExportResult(path=out, format=format, layout=layout, rows=n, filters=filters.as_dict())


MEDIA_TYPES = {
    ExportFormat.jsonl: "application/x-ndjson",
    ExportFormat.parquet: "application/vnd.apache.parquet",
    ExportFormat.hf: "application/zip",
}


def export_file(
    *,
    engine: Engine,
    format: ExportFormat | str,
    layout: Layout | str = Layout.standard,
    filters: ExportFilters | None = None,
    criteria: Sequence[str] = (),
    directory: Path | str | None = None,
) -> ExportResult:
    """Export into a new temporary directory as one file, for a download (the API, the admin
    view); an hf export is zipped. The caller removes `result.path.parent` when done."""
    format = ExportFormat(format)
    tmp = Path(tempfile.mkdtemp(prefix="prefloop-export-", dir=directory))
    try:
        name = "preferences" + ("" if format == ExportFormat.hf else f".{format}")
        result = export_preferences(
            engine=engine,
            out=tmp / name,
            format=format,
            layout=layout,
            filters=filters,
            criteria=criteria,
        )
        if format == ExportFormat.hf:
            archive = shutil.make_archive(str(tmp / "preferences"), "zip", tmp, name)
            shutil.rmtree(tmp / name)
            result = replace(result, path=Path(archive))
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def write_parquet(
    rows: Iterable[PreferenceRow], path: Path, layout: Layout, criteria: Sequence[str] = ()
) -> int:
    """Write rows in row groups of ROWS_PER_GROUP, built column by column (several times
    faster than from dicts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(layout, criteria)
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for group in chunks(rows, ROWS_PER_GROUP):
            columns = _columns(group, layout, criteria)
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            n += len(group)
    return n


def _columns(
    rows: list[PreferenceRow], layout: Layout, criteria: Sequence[str] = ()
) -> dict[str, list]:
    prompts = [r.prompt for r in rows]
    chosen = [r.chosen for r in rows]
    rejected = [r.rejected for r in rows]
    if layout == Layout.conversational:
        prompts = [r.messages or [{"role": "user", "content": r.prompt}] for r in rows]
        chosen = [[{"role": "assistant", "content": text}] for text in chosen]
        rejected = [[{"role": "assistant", "content": text}] for text in rejected]
    return {
        "prompt": prompts,
        "chosen": chosen,
        "rejected": rejected,
        "pair_id": [r.pair_id for r in rows],
        "iteration": [r.iteration for r in rows],
        "policy_version": [r.policy_version for r in rows],
        "strategy": [r.strategy for r in rows],
        "source": [r.source for r in rows],
        "annotators": [r.annotators for r in rows],
        "agreement": [r.agreement for r in rows],
        "proxy_p": [r.proxy_p for r in rows],
        **{f"criterion_{name}": [r.criteria.get(name) for r in rows] for name in criteria},
    }


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_replaceable_dir(out: Path) -> None:
    # Replace only a dataset directory (an earlier export), never an arbitrary folder.
    if out.is_file():
        raise ExportError(f"{out} is a file; hf output is a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "state.json").is_file():
        raise ExportError(
            f"{out} is a non-empty directory that is no saved dataset; not replacing it"
        )


def _parquet_to_dataset_dir(parquet: Path, out: Path) -> None:
    """Write the directory `Dataset.save_to_disk` writes (Arrow IPC stream shards, state.json,
    dataset_info.json) by streaming the Parquet file's row groups into it: save_to_disk needs a
    whole Dataset first, and the memory of building one grows with the rows."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(parquet)
    features = datasets.Features.from_arrow_schema(source.schema_arrow)
    schema = features.arrow_schema  # with the features in its metadata, as save_to_disk writes
    out.mkdir()
    shards: list[Path] = []
    batches = source.iter_batches(batch_size=ROWS_PER_GROUP)
    batch = next(batches, None)
    while batch is not None:
        shards.append(out / f"shard-{len(shards)}.arrow")
        with pa.OSFile(str(shards[-1]), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            written = 0
            while batch is not None and written < MAX_SHARD_BYTES:
                writer.write_batch(batch)
                written += batch.nbytes
                batch = next(batches, None)
    # The names carry the shard count, known only now.
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for shard, name in zip(shards, names, strict=True):
        shard.rename(out / name)
    datasets.DatasetInfo(features=features).write_to_directory(str(out))
    state = {
        "_data_files": [{"filename": name} for name in names],
        # `datasets` names map()'s cache files after it: a fresh one per export, as a new
        # Dataset gets (save_to_disk stores the dataset's own).
        "_fingerprint": secrets.token_hex(8),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "train",
    }
    (out / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def load_export(path: Path | str, format: ExportFormat | str):
    """An export as a `datasets.Dataset` (for pushing it, or checking it)."""
    import datasets

    path, format = Path(path), ExportFormat(format)
    if format == ExportFormat.hf:
        return datasets.load_from_disk(str(path))
    builder = "json" if format == ExportFormat.jsonl else "parquet"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def push_to_hub(
    path: Path | str,
    *,
    format: ExportFormat | str,
    repo: str,
    token: str | None = None,
    private: bool = True,
) -> str:
    """Push an export to the Hugging Face Hub as a dataset repository; returns its URL.

    Fails with HubPushError, naming the cause, when the Hub is offline or there is no token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }:
        raise HubPushError(
            f"cannot push to {repo}: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE=1, "
            "prefloop's default: nothing downloads at run time). Run the push with "
            "HF_HUB_OFFLINE=0 on a machine with network access, or copy the export and push it "
            "from there."
        )
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"cannot push to {repo}: no Hugging Face token. Set HF_TOKEN, or run `hf auth login`."
        )
    dataset = load_export(path, format)
    try:
        dataset.push_to_hub(repo, token=token, private=private)
    except Exception as exc:  # network, authentication, or the Hub refusing: say which
        raise HubPushError(f"pushing to {repo} failed: {type(exc).__name__}: {exc}") from exc
    return f"{constants.ENDPOINT}/datasets/{repo}"
