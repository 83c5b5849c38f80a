"""Export speed and memory: N labeled pairs to Parquet, streaming vs a naive load-all export,
and to a `datasets` directory (hf) against the same naive baseline.

Targets (issue #6): 100k pairs to Parquet in <= 10 s on 2 cores; memory growth <= 300 MB when
exporting 1M, in every format. Each export runs in a fresh child process, so its memory growth is
its peak RSS (VmHWM) minus its RSS once the imports are done, unpolluted by building the data.

python -m benchmarks export [--quick]
"""

from __future__ import annotations

import multiprocessing
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from storage.db import make_engine, upgrade
from storage.models import Label, Pair, Prompt, Response, Suggestion, User

TEXT_CHARS = 200  # a response of ~40 words; the prompt about half that


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def build_database(url: str, n_pairs: int, *, start: int = 0, seed: int = 0) -> None:
    """Pairs start+1 .. start+n_pairs, each on its own prompt with two responses, one human
    label (a second, dissenting or not, on every tenth) and a proxy suggestion. Core inserts in
    batches: this is the fixture, not what is measured."""
    engine = make_engine(url)
    if start == 0:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(User.__table__),
                [
                    {
                        "id": i,
                        "name": f"annotator{i}",
                        "role": "annotator",
                        "active": True,
                        "created_at": datetime.now(UTC),
                    }
                    for i in (1, 2, 3)
                ],  # fmt: skip
            )
    rng = random.Random(seed + start)
    now = datetime.now(UTC)
    filler = "lorem ipsum dolor sit amet consectetur " * 8
    batch = 20_000
    for lo in range(start + 1, start + n_pairs + 1, batch):
        ids = range(lo, min(lo + batch, start + n_pairs + 1))
        prompts, responses, pairs, labels, suggestions = [], [], [], [], []
        for i in ids:
            prompts.append(
                {"id": i, "text": f"prompt {i}: {filler[: TEXT_CHARS // 2]}", "messages": None,
                 "content_hash": f"{i:064x}", "source": "bench", "split": "train",
                 "active": True, "created_at": now}
            )  # fmt: skip
            for j, side in ((2 * i - 1, "a"), (2 * i, "b")):
                responses.append(
                    {"id": j, "prompt_id": i, "policy_id": None, "iteration_id": None,
                     "text": f"{side}{i} {filler[:TEXT_CHARS]}", "sampling": {},
                     "proxy_reward": None, "proxy_version": None, "created_at": now}
                )  # fmt: skip
            pairs.append(
                {"id": i, "prompt_id": i, "response_a_id": 2 * i - 1, "response_b_id": 2 * i,
                 "iteration_id": None, "strategy": "max_min", "route": "human",
                 "status": "done", "overlap": 1, "n_labels": 1, "created_at": now}
            )  # fmt: skip
            label = {"pair_id": i, "source": "human", "swapped": False, "seconds": 4.0,
                     "reason": None, "created_at": now}  # fmt: skip
            labels.append({**label, "user_id": 1 + i % 3, "choice": rng.choice("aab")})
            if i % 10 == 0:
                labels.append({**label, "user_id": 1 + (i + 1) % 3, "choice": rng.choice("ab")})
            suggestions.append(
                {"pair_id": i, "p_a": rng.random(), "uncertainty": 0.1, "reward_a": None,
                 "reward_b": None, "agent": "proxy:v1", "created_at": now}
            )  # fmt: skip
        with engine.begin() as conn:
            for table, rows in (
                (Prompt, prompts),
                (Response, responses),
                (Pair, pairs),
                (Label, labels),
                (Suggestion, suggestions),
            ):
                conn.execute(sa.insert(table.__table__), rows)
    engine.dispose()


def naive_export(url: str, out: Path) -> int:
    """The baseline: one query for everything, aggregated in memory, one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeling.export import Layout, arrow_schema, preference_record
    from storage.preferences import PreferenceRow, decide

    engine = make_engine(url)
    resp_a, resp_b = sa.orm.aliased(Response), sa.orm.aliased(Response)
    query = (
        sa.select(
            Pair.id,
            Pair.strategy,
            Prompt.text,
            resp_a.text,
            resp_b.text,
            Label.choice,
            Label.source,
            User.name,
        )  # fmt: skip
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(resp_a, resp_a.id == Pair.response_a_id)
        .join(resp_b, resp_b.id == Pair.response_b_id)
        .join(Label, Label.pair_id == Pair.id)
        .outerjoin(User, User.id == Label.user_id)
        .order_by(Pair.id)
    )
    with engine.connect() as conn:
        everything = conn.execute(query).all()
        p_a = dict(conn.execute(sa.select(Suggestion.pair_id, Suggestion.p_a)).all())
    grouped: dict[int, list] = {}
    for row in everything:
        grouped.setdefault(row[0], []).append(row)
    records = []
    for pair_id, rows in grouped.items():
        decided = decide(r[5] for r in rows)
        if decided is None:
            continue
        a_wins = decided[0] == "a"
        _, strategy, prompt, text_a, text_b = rows[0][:5]
        row = PreferenceRow(
            pair_id=pair_id, prompt=prompt, messages=None,
            chosen=text_a if a_wins else text_b, rejected=text_b if a_wins else text_a,
            iteration=None, policy_version=None, strategy=str(strategy), source="human",
            annotators=[r[7] for r in rows], agreement=decided[1],
            proxy_p=p_a[pair_id] if a_wins else 1 - p_a[pair_id],
        )  # fmt: skip
        records.append(preference_record(row, Layout.standard))
    pq.write_table(pa.Table.from_pylist(records, schema=arrow_schema(Layout.standard)), out)
    engine.dispose()
    return len(records)


def streaming_export(url: str, out: Path, format: str = "parquet") -> int:
    from labeling.export import export_preferences

    engine = make_engine(url)
    result = export_preferences(engine=engine, out=out, format=format)
    engine.dispose()
    return result.rows


def _child(kind: str, url: str, out: str, queue) -> None:
    # Imports are not the export's memory: pyarrow's first pa.array() imports pandas (~1-2 s,
    # ~50 MB once per process; the server has it loaded already through gradio), and an hf
    # export imports `datasets`.
    import pyarrow as pa

    import labeling.export  # noqa: F401

    if kind == "hf":
        import datasets  # noqa: F401
    pa.array([0])
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    if kind == "naive":
        rows = naive_export(url, Path(out))
    else:
        rows = streaming_export(url, Path(out), "hf" if kind == "hf" else "parquet")
    seconds = time.perf_counter() - start
    queue.put((rows, seconds, (_rss_kb("VmHWM") - before) / 1024))


def measure(kind: str, url: str, out: Path) -> tuple[int, float, float]:
    """(rows, seconds, memory growth in MB) of one export in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(kind, url, str(out), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(quick: bool = False) -> None:
    small, large = (10_000, 50_000) if quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        start = time.perf_counter()
        build_database(url, small)
        print(f"built {small:,} labeled pairs in {time.perf_counter() - start:.1f}s", flush=True)
        # best of two for the times: the machine is shared; memory from the first run
        rows, s_stream, m_stream = measure("streaming", url, Path(tmp) / "s.parquet")
        _, s_naive, m_naive = measure("naive", url, Path(tmp) / "n.parquet")
        s_stream = min(s_stream, measure("streaming", url, Path(tmp) / "s.parquet")[1])
        s_naive = min(s_naive, measure("naive", url, Path(tmp) / "n.parquet")[1])
        print(
            f"export {rows:,} pairs to Parquet: streaming {s_stream:.2f}s (target <= 10s), "
            f"naive load-all {s_naive:.2f}s, ratio {s_stream / s_naive:.2f}x"
        )
        print(
            f"memory growth at {rows:,}: streaming {m_stream:.0f} MB, naive {m_naive:.0f} MB, "
            f"ratio {m_stream / m_naive:.2f}x"
        )
        _, s_hf, m_hf = measure("hf", url, Path(tmp) / "hf")
        print(
            f"export {rows:,} pairs to hf (a datasets directory): {s_hf:.2f}s, memory growth "
            f"{m_hf:.0f} MB, naive Parquet {m_naive:.0f} MB, ratio {m_hf / m_naive:.2f}x"
        )
        start = time.perf_counter()
        build_database(url, large - small, start=small)
        print(f"grew to {large:,} pairs in {time.perf_counter() - start:.1f}s", flush=True)
        rows, s_big, m_big = measure("streaming", url, Path(tmp) / "b.parquet")
        print(
            f"export {rows:,} pairs: streaming {s_big:.1f}s, memory growth {m_big:.0f} MB "
            f"(target <= 300 MB; {m_big / m_stream:.2f}x the growth at {small:,} for "
            f"{large // small}x the rows)"
        )
        _, s_big_hf, m_big_hf = measure("hf", url, Path(tmp) / "hf")
        print(
            f"export {rows:,} pairs to hf: {s_big_hf:.1f}s, memory growth {m_big_hf:.0f} MB "
            f"(target <= 300 MB; {m_big_hf / m_hf:.2f}x the growth at {small:,})"
        )


if __name__ == "__main__":
    main()
