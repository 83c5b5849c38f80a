"""Passwords (argon2) and API tokens. Nothing here logs or prints a secret."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def generate_token() -> str:
    return "pfl_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # API tokens are long random strings: a fast hash is enough and lets us look them up.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
