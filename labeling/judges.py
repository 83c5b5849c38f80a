"""Gold judges: scoring rules ``(prompt, response) -> float``, named by "module:callable"."""

from __future__ import annotations

import importlib
from collections.abc import Callable

DEFAULT_JUDGE = "labeling.demo_task:gold_judge"


def load_judge(spec: str) -> Callable[[str, str], float]:
    """Import the judge named by ``spec`` ("package.module:function")."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"judge spec {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"judge spec {spec!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    judge = getattr(module, attr, None)
    if judge is None:
        raise ValueError(f"judge spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(judge):
        raise ValueError(f"judge spec {spec!r}: {attr!r} is not callable")
    return judge
