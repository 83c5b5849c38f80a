"""503 while the database cannot be reached, instead of a 500 or a hang.

The outermost middleware of the web app: a request whose database work fails because the server
is down, restarting, refusing connections, or the pool has none free in time gets
``503 Service Unavailable`` with ``Retry-After``, as JSON. The engine checks each pooled
connection before use, so the first request after the database is back succeeds without a
restart of prefloop.
"""

from __future__ import annotations

import json
import logging

from storage.db import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class DatabaseUnavailable:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
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
                        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                        (b"x-content-type-options", b"nosniff"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
