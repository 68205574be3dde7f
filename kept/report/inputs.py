"""Reading the per-model result files (formats in docs/architecture.md) with errors that name file and key."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kept.errors import KeptError
from kept.jsonl import read_jsonl  # noqa: F401 - re-exported for the figures


@dataclass(frozen=True)
class Item:
    """One input file of a table or figure, labelled with the grid coordinates it belongs to.

    ``tag`` carries the extra coordinate some artifacts need: the chat format of an MT-Bench file, the step of
    a recovery file. ``path`` is the file (or, for fidelity, the converted model directory). ``detail`` is the
    per-unit data behind it, where the artifact uses one (kept.report.units): lm-eval's raw directory, the
    MT-Bench judgment file, the code probe's items file.
    """

    variant: str
    model: str
    path: str
    tag: str = ""
    detail: str | None = None


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or malformed file is a KeptError naming it."""
    path = Path(path)
    if not path.is_file():
        raise KeptError(f"{path}: missing result file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeptError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise KeptError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def get(obj: dict[str, Any], key: str, *, path: str | Path, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]``, type-checked; a missing key or wrong type is a KeptError naming file and key."""
    if key not in obj:
        raise KeptError(f"{path}: missing key {key!r}")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        raise KeptError(f"{path}: key {key!r} has type {type(value).__name__}")
    return value


def check_number(value: Any, *, where: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float if it is a finite number within [lo, hi]; else a KeptError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise KeptError(f"{where} is not a finite number ({value!r})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise KeptError(f"{where} = {value} outside [{lo}, {hi}]")
    return float(value)


def number(obj: dict[str, Any], key: str, *, path: str | Path, lo: float | None = None,
           hi: float | None = None) -> float:
    """A finite number at ``obj[key]`` within [lo, hi]; anything else is a KeptError naming file and key."""
    return check_number(get(obj, key, path=path), where=f"{path}: key {key!r}", lo=lo, hi=hi)


def check_labels(obj: dict[str, Any], item: Item, *, path: str | Path) -> None:
    """The file's own ``variant`` / ``model`` fields, where present, must match the grid label it was wired to."""
    for key, expected in (("variant", item.variant), ("model", item.model)):
        if key in obj and obj[key] != expected:
            raise KeptError(f"{path}: key {key!r} is {obj[key]!r}, expected {expected!r} for this grid cell")
