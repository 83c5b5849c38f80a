"""The web app under load, on a real `prefloop serve` subprocess and SQLite.

1. Click-to-next-pair latency in the real browser (chromium): from the click on "A better" to
   the next pair's text on screen, timed inside the page; baseline: a fetch of /healthz from the
   same page (one HTTP round trip through the same server).
2. Submit throughput: 50 concurrent clients, each its own signed-in annotator, labeling through
   the labeling app's Gradio queue protocol (what the browser speaks: queue/join + the SSE
   stream); baseline: the same clients hammering GET /healthz.
Targets (issue #5): p95 <= 300 ms, >= 100 submits/s on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from app.sessions import COOKIE_NAME
from storage.models import Role
from tests.app.live_server import PASSWORD, live_server, seed_pairs, seed_users

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

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

HEALTHZ_JS = """
async () => { const t0 = performance.now(); await (await fetch('/healthz')).json();
              return performance.now() - t0; }
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def browser_latency(url: str, n: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/label/")
        page.fill("#name", "bench-browser")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#pf-text-left")
        for _ in range(3):  # warm-up
            page.evaluate(CLICK_TO_NEXT_JS)
            page.evaluate(HEALTHZ_JS)
        clicks, health = [], []
        for _ in range(n):
            clicks.append(page.evaluate(CLICK_TO_NEXT_JS))
            health.append(page.evaluate(HEALTHZ_JS))
        browser.close()
    return {
        "p50": statistics.median(clicks),
        "p95": percentile(clicks, 0.95),
        "base_p50": statistics.median(health),
        "base_p95": percentile(health, 0.95),
    }


class QueueClient:
    """One signed-in browser session speaking Gradio's queue protocol."""

    def __init__(self, http: httpx.AsyncClient, base: str, fns: dict[str, int]):
        self.http, self.base, self.fns = http, base, fns
        self.session_hash = uuid.uuid4().hex[:11]

    async def call(self, api_name: str, data: list) -> dict:
        body = {
            "data": data,
            "fn_index": self.fns[api_name],
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": None,
        }
        join = await self.http.post(f"{self.base}/gradio_api/queue/join", json=body)
        join.raise_for_status()
        event_id = join.json()["event_id"]
        params = {"session_hash": self.session_hash}
        async with self.http.stream(
            "GET", f"{self.base}/gradio_api/queue/data", params=params
        ) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message["msg"] == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{api_name} failed: {message}")
                    return message
        raise RuntimeError(f"{api_name}: stream ended without a result")


async def _login(base: str, name: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=120) as http:  # 50 argon2 checks at once take a while
        r = await http.post(base + "/login", data={"name": name, "password": PASSWORD})
        return {COOKIE_NAME: r.cookies[COOKIE_NAME]}


async def submit_throughput(url: str, names: list[str], seconds: float) -> dict[str, float]:
    base = url + "/label"
    cookies = await asyncio.gather(*(_login(url, name) for name in names))
    config = httpx.get(base + "/config", cookies=cookies[0]).json()
    fns = {d["api_name"]: i for i, d in enumerate(config["dependencies"]) if d.get("api_name")}
    limits = httpx.Limits(max_connections=len(names) * 2)

    async def hammer(deadline: float, work) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await work()
            done += 1
        return done

    async def run(make_work) -> float:
        start = time.perf_counter()
        counts = await asyncio.gather(*(make_work(start + seconds) for _ in names))
        return sum(counts) / (time.perf_counter() - start)

    async with httpx.AsyncClient(limits=limits, timeout=60) as health_http:
        health = await run(lambda end: hammer(end, lambda: health_http.get(url + "/healthz")))

    clients = []
    for cookie in cookies:
        http = httpx.AsyncClient(cookies=cookie, timeout=60)
        clients.append(QueueClient(http, base, fns))
    await asyncio.gather(*(c.call("show", []) for c in clients))
    iterator = iter(clients)

    def submitter(end: float):
        client = next(iterator)
        return hammer(end, lambda: client.call("label_left", [None, ""]))

    submits = await run(submitter)
    for c in clients:
        await c.http.aclose()
    return {"submits_per_s": submits, "healthz_per_s": health}


def main(quick: bool = False) -> None:
    n_clicks = 20 if quick else 60
    n_clients = 50
    seconds = 5.0 if quick else 15.0
    with (
        tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp,
        live_server(Path(tmp)) as server,
    ):
        names = [f"bench{i}" for i in range(n_clients)]
        seed_users(
            server.rt, {"bench-browser": Role.annotator} | dict.fromkeys(names, Role.annotator)
        )
        n_pairs = 200 * (1 if quick else 10) + n_clicks + 10
        seed_pairs(
            server.rt,
            [
                (f"Prompt {i}: *compare*", f"Reply a {i}\n\n- one", f"Reply b {i}")
                for i in range(n_pairs)
            ],
            p_a=0.7,
        )
        latency = browser_latency(server.url, n_clicks)
        print(
            f"click-to-next-pair over {n_clicks} clicks: p50 {latency['p50']:.0f} ms, "
            f"p95 {latency['p95']:.0f} ms (target p95 <= 300 ms); "
            f"baseline fetch /healthz p50 {latency['base_p50']:.1f} ms, "
            f"p95 {latency['base_p95']:.1f} ms; ratio p50 "
            f"{latency['p50'] / latency['base_p50']:.1f}x"
        )
        rates = asyncio.run(submit_throughput(server.url, names, seconds))
        print(
            f"submit throughput, {n_clients} concurrent clients for {seconds:.0f}s: "
            f"{rates['submits_per_s']:.0f} submits/s (target >= 100); baseline GET /healthz "
            f"{rates['healthz_per_s']:.0f} req/s; ratio "
            f"{rates['submits_per_s'] / rates['healthz_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
