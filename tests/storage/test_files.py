"""storage.files.write_atomic: a file in the data directory is replaced whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from storage.files import write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_the_text_with_its_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "cache.json"  # the directory is made
    write_atomic(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and _mode(path) == 0o644
    write_atomic(path, "secret", mode=0o600)
    assert path.read_text() == "secret" and _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "half \udc80 of it")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_failed_rename_removes_its_temporary(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(target, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in target.iterdir()] == ["inside"]
