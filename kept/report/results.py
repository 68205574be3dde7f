"""One run's per-unit results, by variant and row model (seeds pooled): what the findings and the regime tables
read (kept.report.findings, kept.report.regime)."""

from __future__ import annotations

import math
from pathlib import Path

from kept.errors import KeptError
from kept.grid import row_name
from kept.report import stats, units
from kept.report.inputs import Item, check_labels, read_json, read_jsonl


class RunResults:
    """This run's per-unit samples, by (variant, row model), seeds pooled (kept.grid row names)."""

    def __init__(self, items: list[Item]) -> None:
        self.h6: dict[tuple[str, str], list[tuple[dict, dict[str, stats.Sample]]]] = {}
        self.mt: dict[tuple[str, str, str], list[stats.Sample]] = {}
        self.code: dict[tuple[str, str], list[stats.Sample]] = {}
        self.longctx: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
        self.pilot: dict[str, list[dict]] = {}
        self.conversion: dict[tuple[str, str], dict] = {}  # (variant, init) -> conversion.json
        for it in items:
            key = (it.variant, row_name(it.model))
            if it.tag == "pilot":
                self.pilot[it.variant] = list(read_jsonl(it.path))
                continue
            if it.tag == "conversion":  # an init's model directory
                self.conversion[(it.variant, it.model.removeprefix("init-"))] = read_json(Path(it.path) / "conversion.json")
                continue
            obj = read_json(it.path)
            check_labels(obj, it, path=it.path)
            if it.tag == "h6":
                self.h6.setdefault(key, []).append((obj, units.harness_samples(it.path, it.detail)))
            elif it.tag.startswith("mtbench-"):
                found = units.mtbench_samples(it.detail)
                if "average" in found:
                    self.mt.setdefault((*key, it.tag[len("mtbench-"):]), []).append(found["average"])
            elif it.tag == "code":
                self.code.setdefault(key, []).append(units.code_samples(it.detail)["accuracy"])
            elif it.tag == "longctx":
                self.longctx.setdefault(key, []).append((obj, units.longctx_samples(obj, path=it.path)))
            else:
                raise KeptError(f"{it.path}: unknown findings input kind {it.tag!r}")

    def h6_avg(self, variant: str, model: str) -> stats.Sample | None:
        runs = self.h6.get((variant, model))
        if not runs or any("Average" not in s for _, s in runs):
            return None
        return stats.seed_mean([s["Average"] for _, s in runs])

    def h6_chance(self, variant: str) -> float:
        for (v, _), runs in self.h6.items():
            if v == variant:
                cols = runs[0][0]["columns"]
                return 100.0 * sum(c.get("chance") or 0.0 for c in cols) / len(cols)
        return math.nan

    def mt_avg(self, variant: str, model: str, fmt: str) -> stats.Sample | None:
        runs = self.mt.get((variant, model, fmt))
        return stats.seed_mean(runs) if runs else None

    def code_acc(self, variant: str, model: str) -> stats.Sample | None:
        runs = self.code.get((variant, model))
        return stats.seed_mean(runs) if runs else None

    def variants(self, table: dict) -> list[str]:
        return list(dict.fromkeys(k[0] for k in table))
