"""The web app under load, on a real `prefloop serve` subprocess and SQLite, at 2k and 20k queued pairs.

1. Click-to-next-pair latency in the real browser (chromium): from the click on "A better" to
   the next pair's text on screen, timed inside the page; baseline: a fetch of /healthz from the
   same page (one HTTP round trip through the same server).
2. Submit throughput, 50 concurrent clients, each its own annotator:
   (a) the labeling app's Gradio event path, spoken as the page speaks it (a POST to
       /label/gradio_api/run/label_left with the shown pair's id: the labeling events are not
       queued), one submit = one click on "A better" (label + next pair + counters);
   (b) the JSON API, one submit = POST /api/v1/pairs/{id}/label?next=true (label + next pair);
   baseline: the same 50 clients hammering GET /healthz (the server's floor for one request).
   Each phase starts with the queue topped up to its size, so the two sizes show flatness (and
   to at least PHASE_PAIRS_PER_S pairs per second of the phase, so that it never runs dry).
   The three phases alternate for ROUNDS rounds and each reports its best round.
Each size runs with `prefloop serve --workers 1` and `--workers 2`. Client and server share the
machine's cores, as they do in the baseline; the load client is a lean keep-alive HTTP client.
Targets (issue #5): p95 <= 300 ms, >= 100 submits/s on 2 cores.
3. The click-to-next-pair latency again with two criteria (`labeling.criteria`) ticked by key
   before each click and sent with it, and guidelines of about 3 KB of Markdown shown above the
   pair (2k pairs, --workers 1), against the same page without them in the same run. Target
   (issue #14): p95 <= 300 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_queue import add_pairs, queued_pairs
from storage.models import Role
from tests.app.live_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    issue_tokens,
    live_server,
    seed_users,
)
from tests.app.load_client import Connection, PageClient, cookie_header, label_events, login

ROUNDS = 3  # of the throughput phases, alternating; each reports its best
# Pairs queued before a phase, per second of it, at the least: more than any server here labels
# (the best measured 335 submits/s), so that no phase runs the queue dry.
PHASE_PAIRS_PER_S = 600

CLICK_TO_NEXT_JS = """
async () => {
  const text = () => ['pf-text-left', 'pf-text-right']
    .map(id => document.getElementById(id)?.innerText ?? '').join('|');
  const before = text();
  const t0 = performance.now();
  const changed = new Promise(resolve => {
    const observer = new MutationObserver(() => {
      if (text() !== before) { observer.disconnect(); resolve(); }
    });
    observer.observe(document.body, {subtree: true, childList: true, characterData: true});
  });
  document.getElementById('pf-left').click();
  await changed;
  return performance.now() - t0;
}
"""

# Tick both criteria by their keys (not timed), as an annotator does before choosing.
TICK_CRITERIA_JS = """
() => {
  for (const key of ['w', 'z']) {
    document.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
  }
  return document.querySelectorAll('#pf-criteria input:checked').length;
}
"""

HEALTHZ_JS = """
async () => { const t0 = performance.now(); await (await fetch('/healthz')).json();
              return performance.now() - t0; }
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def browser_latency(
    url: str, n: int, *, user: str = "bench-browser", criteria: bool = False
) -> dict[str, float]:
    """Click-to-next-pair in chromium, as `user`; with `criteria`, both criteria are ticked by
    key before each click (and checked to be ticked)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/label/")
        page.fill("#name", user)
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#pf-text-left")

        def click() -> float:
            if criteria and page.evaluate(TICK_CRITERIA_JS) != 2:
                raise RuntimeError("the criteria were not ticked")
            return page.evaluate(CLICK_TO_NEXT_JS)

        for _ in range(3):  # warm-up
            click()
            page.evaluate(HEALTHZ_JS)
        clicks, health = [], []
        for _ in range(n):
            clicks.append(click())
            health.append(page.evaluate(HEALTHZ_JS))
        browser.close()
    return {
        "p50": statistics.median(clicks),
        "p95": percentile(clicks, 0.95),
        "base_p50": statistics.median(health),
        "base_p95": percentile(health, 0.95),
    }


async def _hammer(deadline: float, work) -> int:
    done = 0
    while time.perf_counter() < deadline:
        await work()
        done += 1
    return done


async def _rate(n_clients: int, seconds: float, make_work) -> float:
    """Units of work per second, n_clients coroutines each looping `make_work(deadline)`."""
    start = time.perf_counter()
    counts = await asyncio.gather(*(make_work(start + seconds) for _ in range(n_clients)))
    return sum(counts) / (time.perf_counter() - start)


def _spread(urls: list[str], n: int) -> list[str]:
    """Client i's server: the replicas in turn, as a round-robin load balancer hands them out."""
    return [urls[i % len(urls)] for i in range(n)]


async def healthz_rate(urls: list[str], n_clients: int, seconds: float) -> float:
    connections = [Connection(url, {}) for url in _spread(urls, n_clients)]
    iterator = iter(connections)

    def hammer(end: float):
        connection = next(iterator)
        return _hammer(end, lambda: connection.json("GET", "/healthz"))

    try:
        return await _rate(n_clients, seconds, hammer)
    finally:
        for connection in connections:
            connection.close()


async def gradio_submit_rate(urls: list[str], cookies: list[dict], seconds: float) -> float:
    """Each client as the page: POST /label/gradio_api/run/label_left with the shown pair's id."""
    events = label_events(urls[0], cookies[0])
    clients = [
        PageClient(Connection(url, cookie_header(cookie)), events)
        for url, cookie in zip(_spread(urls, len(cookies)), cookies, strict=True)
    ]
    # The page holds the shown pair's id (the last output) and sends it back with each click.
    shown = await asyncio.gather(*(c.call("show", []) for c in clients))
    held = {id(c): outputs[-1] for c, outputs in zip(clients, shown, strict=True)}
    iterator = iter(clients)

    async def clicks(client: PageClient, end: float) -> int:
        done = 0
        while held[id(client)] is not None and time.perf_counter() < end:
            outputs = await client.call("label_left", [held[id(client)], ""])
            if "Saved" not in outputs[0]:  # the page's body, with its feedback line
                raise RuntimeError(f"a click stored no label: {outputs[0][-300:]}")
            held[id(client)] = outputs[-1]
            done += 1
        if held[id(client)] is None:  # the queue ran dry (see PHASE_PAIRS)
            print("  (the queue ran dry during the Gradio phase)", flush=True)
        return done

    def submitter(end: float):
        return clicks(next(iterator), end)

    try:
        return await _rate(len(clients), seconds, submitter)
    finally:
        for client in clients:
            client.connection.close()


async def api_submit_rate(urls: list[str], tokens: list[str], seconds: float) -> float:
    """POST .../label?next=true in a loop: every call labels the held pair and claims the next."""

    async def annotator(url: str, token: str, end: float) -> int:
        connection = Connection(url, {"Authorization": f"Bearer {token}"})
        try:
            pair = (await connection.json("GET", "/api/v1/pairs/next"))["pair"]
            done = 0
            while pair is not None and time.perf_counter() < end:
                path = f"/api/v1/pairs/{pair['pair_id']}/label?next=true"
                pair = (await connection.json("POST", path, {"choice": "left"}))["next"]
                done += 1
            if pair is None:  # the queue ran dry: the rate is still over the time it took
                print("  (the queue ran dry during the API phase)", flush=True)
            return done
        finally:
            connection.close()

    iterator = iter(zip(_spread(urls, len(tokens)), tokens, strict=True))
    return await _rate(len(tokens), seconds, lambda end: annotator(*next(iterator), end))


def top_up(rt, n_pairs: int) -> None:
    missing = n_pairs - queued_pairs(rt.engine)
    if missing > 0:
        add_pairs(rt.engine, missing)


def submit_rates(
    urls: list[str], rt, names: list[str], tokens: list[str], *, n_pairs: int, seconds: float
) -> dict[str, float]:
    """Submits/s through the Gradio page's event and the JSON API, and GET /healthz req/s, one
    client per name spread over `urls`: the best of ROUNDS alternating rounds each, the queue
    topped up to `n_pairs` before each."""

    async def phases() -> dict[str, float]:
        cookies = await asyncio.gather(*(login(urls[0], name) for name in names))
        measures = {
            "healthz": lambda: healthz_rate(urls, len(names), seconds),
            "gradio": lambda: gradio_submit_rate(urls, cookies, seconds),
            "api": lambda: api_submit_rate(urls, tokens, seconds),
        }
        best = dict.fromkeys(measures, 0.0)
        # The phases alternate, ROUNDS times, and each keeps its best round: the shared
        # machine's load drifts by tens of percent within a minute.
        for _ in range(ROUNDS):
            for name, measure in measures.items():
                top_up(rt, max(n_pairs, int(PHASE_PAIRS_PER_S * seconds)))
                best[name] = max(best[name], await measure())
        return best

    return asyncio.run(phases())


def run_size(n_pairs: int, n_clients: int, seconds: float, n_clicks: int, workers: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp,
        live_server(Path(tmp), workers=workers) as server,
    ):
        names = [f"bench{i}" for i in range(n_clients)]
        seed_users(
            server.rt, {"bench-browser": Role.annotator} | dict.fromkeys(names, Role.annotator)
        )
        tokens = issue_tokens(server.rt, names)
        top_up(server.rt, n_pairs)
        tag = f"{n_pairs:>6} queued pairs, --workers {workers}:"
        latency = browser_latency(server.url, n_clicks)
        print(
            f"{tag} click-to-next-pair over {n_clicks} clicks: p50 {latency['p50']:.0f} ms, "
            f"p95 {latency['p95']:.0f} ms (target p95 <= 300 ms); "
            f"baseline fetch /healthz p50 {latency['base_p50']:.1f} ms, "
            f"p95 {latency['base_p95']:.1f} ms; ratio p50 "
            f"{latency['p50'] / latency['base_p50']:.1f}x",
            flush=True,
        )

        rates = submit_rates(
            [server.url], server.rt, names, tokens, n_pairs=n_pairs, seconds=seconds
        )
        for path, what in (("gradio", "Gradio UI event"), ("api", "JSON API label?next")):
            print(
                f"{tag} submit throughput via {what}, {n_clients} concurrent clients, best of "
                f"{ROUNDS} rounds of {seconds:.0f}s: {rates[path]:.0f} submits/s (target >= 100); "
                f"baseline GET /healthz {rates['healthz']:.0f} req/s; ratio "
                f"{rates[path] / rates['healthz']:.2f}",
                flush=True,
            )


GUIDELINES = "\n\n".join(
    ["# How to choose"]
    + [
        f"## {topic}\n\nPrefer the reply that **{topic.lower()}**: it names the customer's "
        "ticket, gives the concrete next step, and stays polite. A reply that is rude, vague "
        "or about another topic loses, whatever its length. See "
        "[the style guide](https://example.com/style) for more.\n\n- one point\n- another"
        for topic in ("Answers the question", "Is correct", "Is kind", "Is brief", "Is safe") * 2
    ]
)


def criteria_latency(n_clicks: int) -> None:
    """Click-to-next with two criteria and guidelines, against the plain page in the same run
    (the same server and queue, a fresh annotator each)."""
    from storage import crud, guidelines
    from storage.db import transaction

    with (
        tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp,
        live_server(Path(tmp), workers=1) as server,
    ):
        seed_users(server.rt, {"plain": Role.annotator, "judge": Role.annotator})
        top_up(server.rt, 2_000)
        plain = browser_latency(server.url, n_clicks, user="plain")
        with transaction(server.rt.engine) as session:
            crud.set_overrides(
                session=session,
                values={"labeling.criteria": ["helpfulness", "harmlessness"]},
                user_id=None,
            )
            guidelines.publish(session=session, text=GUIDELINES, user_id=None)
        judged = browser_latency(server.url, n_clicks, user="judge", criteria=True)
    print(
        f"  2000 queued pairs, --workers 1, two criteria ticked by key and {len(GUIDELINES):,} "
        f"characters of guidelines: click-to-next-pair over {n_clicks} clicks p50 "
        f"{judged['p50']:.0f} ms, p95 {judged['p95']:.0f} ms (target p95 <= 300 ms); the page "
        f"without them p50 {plain['p50']:.0f} ms, p95 {plain['p95']:.0f} ms; ratio p50 "
        f"{judged['p50'] / plain['p50']:.2f}x",
        flush=True,
    )


def main(quick: bool = False) -> None:
    n_clicks = 20 if quick else 60
    seconds = 5.0 if quick else 10.0
    criteria_latency(n_clicks)
    for workers in (1, 2):  # one process, and one per core of a 2-core machine
        for n_pairs in (2_000, 20_000):
            run_size(n_pairs, 50, seconds, n_clicks, workers)


if __name__ == "__main__":  # python -m benchmarks.bench_app [--criteria]: only part 3
    import sys

    if "--criteria" in sys.argv:
        criteria_latency(60)
    else:
        main()
