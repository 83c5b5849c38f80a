"""`prefloop worker`: status and stop with no worker, start refused for the transformers backend."""

from __future__ import annotations

from typer.testing import CliRunner

from app.cli import cli

runner = CliRunner()


def test_worker_commands_without_a_worker(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("PREFLOOP_ADMIN_PASSWORD", raising=False)
    assert runner.invoke(cli, ["init", "--data-dir", str(tmp_path)]).exit_code == 0
    status = runner.invoke(cli, ["worker", "status", "--data-dir", str(tmp_path)])
    assert status.exit_code == 1 and "no generation worker is running" in status.output
    stop = runner.invoke(cli, ["worker", "stop", "--data-dir", str(tmp_path)])
    assert stop.exit_code == 0 and "none was running" in stop.output
    start = runner.invoke(cli, ["worker", "start", "--data-dir", str(tmp_path)])
    assert start.exit_code == 1 and "generation.backend" in start.output
