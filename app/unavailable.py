"""503 while the database cannot be reached, instead of a 500 or a hang.

The outermost middleware of the web app: a request whose database work fails because the server
is down, restarting, refusing connections, or the pool has none free in time gets
``503 Service Unavailable`` with ``Retry-After``, as JSON. The engine checks each pooled
connection before use, so the first request after the database is back succeeds without a
restart of prefloop.

Gradio's event routes catch every exception of a handler and answer 500 themselves, so the UI's
handlers report an outage with `database_outage()` (a message for the page, see app.ui.guard);
the middleware then turns that answer's status into 503 with Retry-After, its body (the
message) unchanged.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

from storage.db import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Per request, set by the middleware: a dict that a handler marks (worker threads share it,
# since they run in a copy of the request's context holding the same dict).
_outage: ContextVar[dict | None] = ContextVar("prefloop_database_outage", default=None)


def database_outage(error: BaseException) -> None:
    """A handler met a lost database (`error`): the answer to this request becomes a 503."""
    box = _outage.get()
    if box is not None:
        box["outage"] = True
    log.warning("database unavailable in a UI event: %s", type(error).__name__)


def _retry_after_headers() -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"cache-control", b"no-store")]


class DatabaseUnavailable:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        box: dict = {}
        _outage.set(box)

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if box.get("outage"):
                    headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                    message = {
                        **message,
                        "status": 503,
                        "headers": headers + _retry_after_headers(),
                    }
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except UNAVAILABLE_ERRORS as error:
            if started:
                raise
            # The error's class only: its text may carry the server's address.
            log.warning("database unavailable on %s: %s", scope.get("path"), type(error).__name__)
            body = json.dumps({"detail": "database unavailable, try again shortly"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"x-content-type-options", b"nosniff"),
                        *_retry_after_headers(),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
