"""Backoff for failed sign-ins, per user name and per client address.

A few failures are free; each one after them shuts the key out for twice as long as the one
before (1 s, 2 s, 4 s ... at most 15 minutes), and an attempt while shut out is refused (429 with
Retry-After) before any password is checked. The penalty always runs out, a quiet hour forgets
the failures, and a successful sign-in clears the user name's count, so nobody is locked out for
good. A client address gets more free failures than a user name: many annotators may share one
address behind a NAT.

The counts live in this process's memory, bounded to `max_keys` keys per kind (the least recently
failed are forgotten first): each server process (`serve --workers N`, each replica) counts on its
own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from storage import crud
from storage.db import transaction
from storage.runtime import Runtime

MAX_KEY_CHARS = 256  # a name or address longer than this counts under its first 256 characters


@dataclass
class _Strikes:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0


class Backoff:
    """Failures per key, thread-safe. `wait(key)` is how long the key must wait before its next
    attempt (0: go ahead); `fail(key)` counts a failure; `clear(key)` forgets the key."""

    def __init__(
        self,
        *,
        free_failures: int,
        first_penalty_seconds: float = 1.0,
        max_penalty_seconds: float = 900.0,
        forget_after_seconds: float = 3600.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if forget_after_seconds < max_penalty_seconds:
            raise ValueError("failures must be remembered at least as long as a penalty lasts")
        self.free_failures = free_failures
        self.first_penalty = first_penalty_seconds
        self.max_penalty = max_penalty_seconds
        self.forget_after = forget_after_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()  # least recently failed first

    def wait(self, key: str) -> float:
        key = key[:MAX_KEY_CHARS]
        with self._lock:
            now = self.clock()
            strikes = self._strikes.get(key)
            if strikes is None:
                return 0.0
            if now - strikes.last_failure >= self.forget_after:
                del self._strikes[key]
                return 0.0
            return max(0.0, strikes.blocked_until - now)

    def fail(self, key: str) -> None:
        key = key[:MAX_KEY_CHARS]
        with self._lock:
            now = self.clock()
            strikes = self._strikes.pop(key, None)
            if strikes is None or now - strikes.last_failure >= self.forget_after:
                strikes = _Strikes()
            strikes.failures += 1
            strikes.last_failure = now
            over = strikes.failures - self.free_failures
            if over > 0:
                penalty = self.first_penalty * 2 ** min(over - 1, 32)
                strikes.blocked_until = now + min(penalty, self.max_penalty)
            self._strikes[key] = strikes
            # Ordered by last failure: the forgotten ones are at the front, then the oldest.
            while self._strikes:
                oldest = next(iter(self._strikes.values()))
                if len(self._strikes) <= self.max_keys and now - oldest.last_failure < (
                    self.forget_after
                ):
                    break
                self._strikes.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._strikes.pop(key[:MAX_KEY_CHARS], None)

    def __len__(self) -> int:
        return len(self._strikes)


class SignInThrottle:
    """Failed sign-ins (browser logins, API tokens) per user name and per client address."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self.names = Backoff(free_failures=5, clock=clock)
        self.addresses = Backoff(free_failures=20, clock=clock)

    def retry_after(self, *, address: str, name: str | None = None) -> int:
        """Whole seconds before this caller may try again; 0: now."""
        wait = self.addresses.wait(address)
        if name is not None:
            wait = max(wait, self.names.wait(name))
        return math.ceil(wait)

    def failed(self, *, address: str, name: str | None = None) -> None:
        self.addresses.fail(address)
        if name is not None:
            self.names.fail(name)

    def succeeded(self, *, name: str) -> None:
        """The user name's count starts again. (Not the address's: signing in to one's own account
        must not buy more guesses at others'.)"""
        self.names.clear(name)


def client_address(connection) -> str:
    """The caller's address as uvicorn gives it (X-Forwarded-For from a trusted proxy)."""
    return connection.client.host if connection.client else "unknown"


def sign_in_failed(
    rt: Runtime, throttle: SignInThrottle, *, via: str, address: str, name: str | None = None
) -> None:
    """Count a failed sign-in (a wrong password, an unknown API token) and audit it: the one
    place for both, called by the login page and the API."""
    throttle.failed(address=address, name=name)
    detail = {"via": via, "address": address[:MAX_KEY_CHARS]}
    if name is not None:
        detail["name"] = name[:MAX_KEY_CHARS].replace("\x00", "")
    with transaction(rt.engine) as session:
        crud.record_audit(session=session, user_id=None, action="sign_in.failed", detail=detail)
