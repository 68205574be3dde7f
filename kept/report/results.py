"""One run's per-unit results, by variant and row model (seeds pooled): what the findings and the regime tables
read (kept.report.findings, kept.report.regime).

Input tags (:class:`kept.report.inputs.Item`): ``h6`` and ``kommlu`` (summary, detail = lm-eval's raw directory),
``mtbench-<format>`` (summary, detail = judgments), ``mtfacts-<format>`` (the answer file, detail = the toy
rubric), ``code`` (summary, detail = items), ``longctx``, ``pilot``, ``conversion`` (an init's model directory),
``mixture`` (mixture_loss.json, kept.eval.mixture), ``train`` (a train log) and ``pretrain-<teacher>`` (the
pretraining log of a teacher the variant's teacher descends from, itself included).
"""

from __future__ import annotations

import math
from functools import lru_cache
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
        self.fidelity: dict[tuple[str, str], dict[str, stats.Sample]] = {}  # (variant, init) -> per-sequence KL, top-1
        self.h6_files: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # (summary, raw dir) per seed
        self.kommlu_files: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        self.mt_facts: dict[tuple[str, str, str], list[dict[str, stats.Sample]]] = {}
        self.mixture: dict[tuple[str, str], list[dict]] = {}
        self.train_logs: dict[tuple[str, str], list[list[dict]]] = {}
        self.pretrain: dict[str, dict[str, list[dict]]] = {}  # variant -> teacher of its chain -> log lines
        for it in items:
            key = (it.variant, row_name(it.model))
            if it.tag == "pilot":
                self.pilot[it.variant] = list(read_jsonl(it.path))
                continue
            if it.tag == "train" or it.tag.startswith("pretrain-"):
                lines = list(read_jsonl(it.path))
                if not lines:
                    raise KeptError(f"{it.path}: empty train log")
                if it.tag == "train":
                    self.train_logs.setdefault(key, []).append(lines)
                else:
                    self.pretrain.setdefault(it.variant, {})[it.tag[len("pretrain-"):]] = lines
                continue
            if it.tag.startswith("mtfacts-"):
                if it.detail is None:
                    raise KeptError(f"{it.path}: rubric facts need the toy rubric beside the answers")
                self.mt_facts.setdefault((*key, it.tag[len("mtfacts-"):]), []).append(
                    units.rubric_fact_samples(it.path, it.detail))
                continue
            if it.tag == "fidelity":  # an init's model directory: its fidelity.json's per-sequence KL and top-1
                path = Path(it.path) / "fidelity.json"
                self.fidelity[(it.variant, it.model.removeprefix("init-"))] = units.fidelity_samples(read_json(path),
                                                                                                    path=path)
                continue
            if it.tag == "conversion":  # an init's model directory
                self.conversion[(it.variant, it.model.removeprefix("init-"))] = read_json(Path(it.path) / "conversion.json")
                continue
            obj = read_json(it.path)
            check_labels(obj, it, path=it.path)
            if it.tag == "h6":
                self.h6.setdefault(key, []).append((obj, units.harness_samples(it.path, it.detail)))
                self.h6_files.setdefault(key, []).append((it.path, it.detail))
            elif it.tag == "kommlu":
                self.kommlu_files.setdefault(key, []).append((it.path, it.detail))
            elif it.tag == "mixture":
                self.mixture.setdefault(key, []).append(obj)
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

    def h6_avg(self, variant: str, model: str, split: str | None = None) -> stats.Sample | None:
        """The H6 average (seeds pooled), over every item or (``split``: in / out) over the items of one side of
        the transfer corpus."""
        if split is not None:
            return self.split_avg("h6", variant, model, split)
        runs = self.h6.get((variant, model))
        if not runs or any("Average" not in s for _, s in runs):
            return None
        return stats.seed_mean([s["Average"] for _, s in runs])

    def split_avg(self, suite: str, variant: str, model: str, split: str) -> stats.Sample | None:
        """The average over a suite's (h6 / kommlu) columns of one model, on its in- or out-of-corpus items."""
        files = (self.h6_files if suite == "h6" else self.kommlu_files).get((variant, model))
        if not files:
            return None
        found = [_split_samples(path, raw, split) for path, raw in files]
        if any("Average" not in f for f in found):
            return None
        return stats.seed_mean([f["Average"] for f in found])

    def h6_chance(self, variant: str, split: str | None = None) -> float:
        """The chance level of the H6 average (percent), over every column or over the columns a split has."""
        for (v, m), runs in self.h6.items():
            if v == variant:
                cols = runs[0][0]["columns"]
                if split is not None:
                    path, raw = self.h6_files[(v, m)][0]
                    present = set(_split_samples(path, raw, split)) - {"Average"}
                    cols = [c for c in cols if c["name"] in present]
                    if not cols:
                        return math.nan
                return 100.0 * sum(c.get("chance") or 0.0 for c in cols) / len(cols)
        return math.nan

    def mt_facts_share(self, variant: str, model: str, fmt: str, split: str) -> stats.Sample | None:
        """The share of the MT-Bench rubric's required facts met (percent), on one side of the corpus."""
        runs = self.mt_facts.get((variant, model, fmt))
        if not runs or any(split not in r for r in runs):
            return None
        return stats.seed_mean([r[split] for r in runs])

    def mixture_loss(self, variant: str, model: str) -> stats.Sample | None:
        """Mean loss per token on the teacher's held-out pretraining mixture, over its sequences."""
        runs = self.mixture.get((variant, model))
        if not runs:
            return None
        found = []
        for obj in runs:
            values = obj.get("per_sequence")
            if not isinstance(values, list) or not values:
                raise KeptError(f"mixture loss of {variant}/{model}: no per_sequence values")
            found.append(stats.mean_sample([str(i) for i in range(len(values))], values))
        return stats.seed_mean(found)

    def mt_avg(self, variant: str, model: str, fmt: str) -> stats.Sample | None:
        runs = self.mt.get((variant, model, fmt))
        return stats.seed_mean(runs) if runs else None

    def code_acc(self, variant: str, model: str) -> stats.Sample | None:
        runs = self.code.get((variant, model))
        return stats.seed_mean(runs) if runs else None

    def variants(self, table: dict) -> list[str]:
        return list(dict.fromkeys(k[0] for k in table))


@lru_cache(maxsize=None)
def _split_samples(summary: str, raw_dir: str | None, split: str) -> dict[str, stats.Sample]:
    """Per-column samples of one harness summary on one side of the corpus (read once per file and split)."""
    return units.harness_samples(summary, raw_dir, split=split)
