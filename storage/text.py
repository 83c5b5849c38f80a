"""What PostgreSQL cannot hold and SQLite can, stored the same on both.

JSON columns: NaN and the infinities are no JSON; Python writes them as tokens that SQLite keeps
and PostgreSQL refuses, failing the write (a diverged DPO round's loss, say). Both store null
(`to_json`, every engine's JSON serializer).

Text: PostgreSQL cannot hold a NUL character (U+0000) in a text column, nor take one as a query's
parameter. So:

- what a person gives (a reason, a note, guidelines, a rewrite, an imported text, a name) is
  refused with its field named (`refuse_nul`);
- what a model writes is kept, a NUL in it shown as U+FFFD, the replacement character
  (`model_text`): a round's replies cannot be refused, and one token must not fail a round;
- a lookup by a text that holds one finds nothing, without asking the database (`may_exist`)."""

from __future__ import annotations

import json
import math
from typing import Any

NUL = "\x00"
REPLACEMENT = "\ufffd"


def nul_at(text: str) -> int | None:
    """The index of the first NUL in `text`; None: none."""
    at = text.find(NUL)
    return None if at < 0 else at


def refuse_nul(field: str, text: str | None) -> None:
    """ValueError naming `field` and the character when `text` holds a NUL."""
    at = None if text is None else nul_at(text)
    if at is not None:
        raise ValueError(
            f"{field}: a NUL character (\\x00) at character {at + 1:,} cannot be stored"
        )


def model_text(text: str) -> str:
    """A model's reply as stored and shown: each NUL replaced by U+FFFD."""
    return text.replace(NUL, REPLACEMENT)


def may_exist(text: str) -> bool:
    """Whether a stored text can equal `text` (none holds a NUL)."""
    return NUL not in text


def to_json(value: Any) -> str:
    """A JSON column's text, each non-finite float as null."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
