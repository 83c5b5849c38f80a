"""A lean HTTP client for load: the app benchmark's and the replica test's annotators.

httpx spends about 10 ms of CPU per request: with 50 clients on the server's 2 cores it
measured the client (GET /healthz topped out near 100/s). `Connection` costs ~0.2 ms a request.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from app.sessions import COOKIE_NAME
from tests.app.live_server import PASSWORD

# What a dropped connection looks like to a client: refused, reset, or closed mid-answer.
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError, IndexError)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for the load phases."""

    def __init__(self, url: str, headers: dict[str, str]):
        host_port = url.split("://", 1)[1]
        self.url = url
        self.host, self.port = host_port.split(":")[0], int(host_port.split(":")[1])
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host_port, **headers}.items())
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self.head}"
        if payload:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        status = int((await self.reader.readline()).split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length)
        data = b""
        while size := int((await self.reader.readline()).strip(), 16):
            data += (await self.reader.readexactly(size + 2))[:-2]
        await self.reader.readline()
        return status, data

    async def json(self, method: str, path: str, body: object = None) -> dict:
        status, data = await self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def login(base: str, name: str) -> dict[str, str]:
    """A signed-in browser's cookie for `name` (the test users' shared password)."""
    async with httpx.AsyncClient(timeout=120) as http:  # 50 argon2 checks at once take a while
        r = await http.post(base + "/login", data={"name": name, "password": PASSWORD})
        return {COOKIE_NAME: r.cookies[COOKIE_NAME]}


def cookie_header(cookie: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items())}


def label_events(url: str, cookie: dict[str, str]) -> dict[str, int]:
    """The labeling page's direct events by api_name -> fn_index (they must not be queued)."""
    config = httpx.get(url + "/label/config", cookies=cookie).json()
    deps = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}
    if deps["label_left"].get("queue") is not False:
        raise RuntimeError("label_left is a queued event: the page would not POST it directly")
    return {name: dep["id"] for name, dep in deps.items()}


class PageClient:
    """One annotator's labeling page, spoken as the page speaks it: a POST to
    /label/gradio_api/run/<event> per click, sending back the shown pair's id."""

    def __init__(self, connection: Connection, events: dict[str, int]):
        self.connection = connection
        self.events = events
        self.session_hash = uuid.uuid4().hex[:11]

    async def call(self, api_name: str, data: list) -> list:
        body = {
            "data": data,
            "fn_index": self.events[api_name],
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": None,
        }
        path = f"/label/gradio_api/run/{api_name}"
        return (await self.connection.json("POST", path, body))["data"]
