"""kept.jsonl.read_jsonl: every bad file is a KeptError that names the file (and the line)."""

import pytest

from kept.errors import KeptError
from kept.jsonl import read_jsonl


def test_reads_objects_and_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"b": "한국어"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": "한국어"}]


@pytest.mark.parametrize("text, needle", [
    ('{"a": 1}\n{"a": \n', "a.jsonl:2: not valid JSON"),
    ('{"a": 1}\n[1, 2]\n', "a.jsonl:2: expected a JSON object, found list"),
    ("\n\n", "a.jsonl: no answers"),
])
def test_bad_files_are_named(tmp_path, text, needle):
    path = tmp_path / "a.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KeptError, match=needle):
        read_jsonl(path, what="answers")


def test_missing_and_empty(tmp_path):
    with pytest.raises(KeptError, match="b.jsonl: missing judgments file"):
        read_jsonl(tmp_path / "b.jsonl", what="judgments")
    (tmp_path / "c.jsonl").write_text("")
    assert read_jsonl(tmp_path / "c.jsonl", allow_empty=True) == []
