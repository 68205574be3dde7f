"""Reading JSON-lines files with errors that name the file and line (no heavy imports: the report uses it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kept.errors import KeptError


def read_jsonl(path: str | Path, *, what: str = "records", allow_empty: bool = False) -> list[dict[str, Any]]:
    """All JSON objects of a JSON-lines file, blank lines skipped. A missing or malformed file, a line that is not
    a JSON object, or (unless ``allow_empty``) a file with no records is a KeptError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise KeptError(f"{path}: missing {what} file")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KeptError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise KeptError(f"{path}:{lineno}: expected a JSON object, found {type(row).__name__}")
            rows.append(row)
    if not rows and not allow_empty:
        raise KeptError(f"{path}: no {what}")
    return rows


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write JSON lines."""
    from kept.atomic import atomic_file

    with atomic_file(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
