"""Signed session cookies: stateless, so any `serve` replica with the same data directory (or the
same PREFLOOP_SESSION_SECRET) accepts them.

A cookie holds the user id, when it was issued, and a fingerprint of the user's password hash:
changing a password ends every session of that user. Whether the user is still active, and their
role, are read from the database on every call (`app.ui.guard`), never trusted from the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE_NAME = "prefloop_session"
SECRET_FILE = "session.key"
MAX_AGE_SECONDS = 12 * 3600


def load_or_create_secret(data_dir: Path) -> bytes:
    """The signing key: PREFLOOP_SESSION_SECRET, or a random key kept 0600 in the data directory."""
    if env := os.environ.get("PREFLOOP_SESSION_SECRET"):
        return env.encode("utf-8")
    path = Path(data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    # O_EXCL: two replicas starting at once agree on whichever key was written first.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def password_fingerprint(password_hash: str | None) -> str:
    return hashlib.sha256((password_hash or "").encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SessionData:
    user_id: int
    fingerprint: str
    issued_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def sign_session(secret: bytes, *, user_id: int, password_hash: str | None) -> str:
    body = {"u": user_id, "f": password_fingerprint(password_hash), "t": int(time.time())}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_mac(secret, payload)}"


def read_session(
    secret: bytes, token: str | None, *, max_age: float = MAX_AGE_SECONDS
) -> SessionData | None:
    """The session in a cookie value, or None if it is missing, forged, malformed or expired."""
    if not token or token.count(".") != 1:
        return None
    payload, mac = token.split(".")
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        body = json.loads(_unb64(payload))
        data = SessionData(int(body["u"]), str(body["f"]), float(body["t"]))
    except (ValueError, KeyError, TypeError):
        return None
    if not 0 <= time.time() - data.issued_at <= max_age:
        return None
    return data
