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


def test_ownership_rule(tmp_path):
    """An existing output is replaced when ours (marker) or holding no files (Snakemake pre-creates the parent
    directories of a job's outputs); a foreign one with files is refused, unless overwrite; inputs never."""
    from kept.atomic import MARKER, check_output, remove_output
    from kept.errors import OutputError

    skeleton = tmp_path / "eval_data"
    (skeleton / "mtbench").mkdir(parents=True)
    (skeleton / "longctx" / "deep").mkdir(parents=True)
    with atomic_dir(skeleton) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (skeleton / MARKER).is_file() and not (skeleton / "mtbench").exists()

    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by kept"):
        with atomic_dir(foreign):
            pass
    with pytest.raises(OutputError, match="not written by kept"):
        remove_output(foreign)
    assert (foreign / "sub" / "notes.txt").read_text() == "mine"
    with atomic_dir(foreign, overwrite=True) as tmp:
        (tmp / "x").write_text("new")
    assert sorted(p.name for p in foreign.iterdir()) == [MARKER, "x"]

    src = tmp_path / "models" / "src"
    src.mkdir(parents=True)
    for bad in (src, src.parent, src / "out"):
        with pytest.raises(OutputError, match="input"):
            check_output(bad, inputs=[src], overwrite=True)  # overwrite never reaches an input
    remove_output(skeleton)
    assert not skeleton.exists()
