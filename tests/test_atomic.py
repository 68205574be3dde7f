"""kept.atomic: outputs appear whole or not at all, with the permissions of ordinary files."""

import os

import pytest

from kept.atomic import atomic_dir, atomic_file, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash mid-write")
    assert (final / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_atomic_file_leaves_nothing_on_crash(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "x.json") as fh:
            fh.write("{")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
