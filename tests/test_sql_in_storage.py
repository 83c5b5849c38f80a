"""SQL lives in storage/: app/, labeling/ and training/ call its functions and never build a query
or call a session's methods themselves (so a missing row raises storage's NotFound everywhere).

They may name `Session` and `Engine` in type annotations and hand a session on as
``session=session``. Everything else from sqlalchemy or sqlmodel, and any method call on a session
(``session.get``, ``.exec``, ``.add``, ``.commit``...), is a violation. tests/ and benchmarks/ build
their fixtures with the ORM and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("app", "labeling", "training")
ORM_MODULES = ("sqlalchemy", "sqlmodel")
# What a type annotation may name; the rest of these libraries builds or runs queries.
ALLOWED = {("sqlmodel", "Session"), ("sqlalchemy.engine", "Engine")}


def _is_orm(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ORM_MODULES)


def _names_session(annotation: ast.expr | None) -> bool:
    """An annotation that is `Session`, `Session | None` or "Session"."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return "Session" in annotation.value.replace(" ", "").split("|")
    return any(isinstance(n, ast.Name) and n.id == "Session" for n in ast.walk(annotation))


def _session_names(tree: ast.AST) -> set[str]:
    """`session`, and every name bound to a session: `with transaction(...) as own`,
    `own = Session(...)`, a parameter annotated `Session`."""
    names = {"session"}
    for node in ast.walk(tree):
        if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            call = node.context_expr
            if isinstance(call, ast.Call) and _callee(call) in ("transaction", "Session"):
                names.add(node.optional_vars.id)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if _callee(node.value) in ("transaction", "Session"):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.arg) and _names_session(node.annotation):
            names.add(node.arg)
    return names


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def violations(path: Path) -> list[str]:
    """'path:line: what' for each query built or session method called in the file at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    sessions = _session_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_orm(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and _is_orm(node.module):
            for alias in node.names:
                if (node.module, alias.name) not in ALLOWED:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in sessions
        ):
            found.append((node.lineno, f"{node.func.value.id}.{node.func.attr}(...)"))
    return [f"{path}:{line}: {what}" for line, what in sorted(found)]


def test_app_labeling_and_training_leave_sql_to_storage():
    found = [
        v
        for package in CHECKED
        for path in sorted((ROOT / package).rglob("*.py"))
        for v in violations(path)
    ]
    assert not found, "SQL outside storage/ (add a storage function instead):\n" + "\n".join(found)


def test_the_check_finds_queries_and_session_calls(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sqlalchemy as sa\n"  # 1
        "from sqlmodel import Session, select\n"  # 2
        "from storage.db import transaction\n"
        "from storage.models import Iteration\n"
        "\n"
        "def k_of(engine, iteration_id):\n"
        "    with transaction(engine) as own:\n"
        "        iteration = own.get(Iteration, iteration_id)\n"  # 8
        "        own.commit()\n"  # 9
        "    return iteration.k\n"
        "\n"
        "def count(db: Session | None):\n"
        "    from sqlalchemy.orm import aliased\n"  # 13
        "    return db.exec(select(Iteration)).all()\n"  # 14
        "\n"
        "def first(session):\n"
        "    session.add(Iteration(k=0))\n"  # 17
    )
    assert [v.split(": ", 1)[1] for v in violations(bad)] == [
        "import sqlalchemy",
        "from sqlmodel import select",
        "own.get(...)",
        "own.commit(...)",
        "from sqlalchemy.orm import aliased",
        "db.exec(...)",
        "session.add(...)",
    ]
    assert violations(bad)[0].startswith(f"{bad}:1: ")


def test_the_check_allows_annotations_and_storage_calls(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(
        "from sqlalchemy.engine import Engine\n"
        "from sqlmodel import Session\n"
        "from storage import crud\n"
        "from storage.db import transaction\n"
        "\n"
        "def k_of(engine: Engine, iteration_id: int, session: Session | None = None) -> int:\n"
        "    if session is None:\n"
        "        with transaction(engine, readonly=True) as own:\n"
        "            return k_of(engine, iteration_id, own)\n"
        "    return crud.get_iteration(session=session, iteration_id=iteration_id).k\n"
        "\n"
        "def unrelated(settings: dict, seen: set):\n"
        "    seen.add(settings.get('k'))\n"
    )
    assert violations(good) == []
