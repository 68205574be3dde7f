"""Per-unit data behind each reported number, read from the files every evaluation already writes.

The report's standard errors and paired tests (:mod:`kept.report.stats`) need each model's score on each item,
question, document or sequence. The sources (formats in docs/architecture.md):

- lm-eval suites (``h6``, ``kommlu``): the per-sample logs ``samples_<task>.jsonl`` in the raw directory beside
  the summary (``log_samples``), one row per document and filter; a column over an lm-eval group has one
  stratum per leaf task (macro average: weight 1/leaves; lm-eval's size-weighted group value: one pooled stratum);
  ``split`` keeps the documents the toy suites tag ``corpus: in`` / ``out`` (in / out of the transfer corpus);
- MT-Bench rubric facts (toy judge): the answer file and the rubric, one unit per required group of a turn, met
  or not, tagged in / out of the transfer corpus (:func:`kept.world.judge.rubric_facts`);
- MT-Bench: the FastChat judgment file (a unit is a question; failed judgments, score -1, are left out);
- code probe: ``code.items.jsonl`` (per item ``correct``, ``nll``, ``tokens``);
- long context: ``longctx.json``'s ``doc_nll`` (per document, the summed NLL of its first L tokens);
- fidelity: ``fidelity.json``'s ``kl_per_sequence`` / ``top1_per_sequence``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from kept.errors import KeptError
from kept.jsonl import read_jsonl
from kept.report.inputs import check_number, get, read_json
from kept.report.stats import Sample, Stratum, average_sample, mean_sample


def _safe_name(name: str) -> str:  # as kept.eval.harness names the per-sample files
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _leaves(name: str, group_map: dict[str, list[str]]) -> list[str]:
    if name not in group_map:
        return [name]
    return [leaf for child in group_map[name] for leaf in _leaves(child, group_map)]


SPLITS = ("in", "out")  # the toy suites' corpus tags: in / out of the transfer corpus (kept.world.evaldata)


def _task_units(raw_dir: Path, task: str, metric: str, split: str | None = None) -> Stratum | None:
    """Per-document values of ``metric`` (``name,filter``) in one leaf task's per-sample log; with ``split``, only
    the documents tagged ``corpus: split`` (None when there are none)."""
    name, filt = metric.split(",", 1)
    path = raw_dir / f"samples_{_safe_name(task)}.jsonl"
    if not path.is_file():
        raise KeptError(f"{path}: missing per-sample log of task {task!r} (eval.harness.log_samples must be on)")
    ids, values = [], []
    for i, row in enumerate(read_jsonl(path, what="lm-eval samples"), start=1):
        if row.get("filter", "none") != filt:
            continue
        where = f"{path}:{i}"
        if name not in row:
            raise KeptError(f"{where}: no metric {name!r} in the per-sample row")
        if split is not None:
            tag = (row.get("doc") or {}).get("corpus")
            if tag not in SPLITS:
                raise KeptError(f"{where}: the document has no corpus tag ('in' / 'out', kept.world.evaldata), "
                                f"found {tag!r}: rebuild the eval data")
            if tag != split:
                continue
        ids.append(f"{task}:{get(row, 'doc_id', path=where)}")
        values.append(check_number(row[name], where=f"{where} {name}"))
    if not ids:
        if split is not None:
            return None
        raise KeptError(f"{path}: no rows for filter {filt!r}")
    return Stratum(ids, np.asarray(values), np.ones(len(values)))


def harness_column(raw_dir: str | Path, column: dict[str, Any], *, scale: float = 100.0,
                   split: str | None = None) -> Sample | None:
    """The per-unit sample of one column of a harness summary (``column``: its summary entry); with ``split``,
    over the column's items in / out of the transfer corpus only (None when it has none there)."""
    raw_dir = Path(raw_dir)
    results = read_json(raw_dir / "results.json")
    group_map = results.get("group_subtasks", {}) or {}
    task, metric = column["task"], column["metric"]
    leaves = _leaves(task, group_map)
    strata = [s for s in (_task_units(raw_dir, leaf, metric, split) for leaf in leaves) if s is not None]
    if not strata:
        return None
    if len(strata) == 1:
        return Sample(strata, scale=scale)
    if column.get("average") == "macro" or column.get("value") == column.get("macro"):
        return average_sample([Sample([s], scale=scale) for s in strata])
    pooled = Stratum([u for s in strata for u in s.ids], np.concatenate([s.num for s in strata]),
                     np.concatenate([s.den for s in strata]))
    return Sample([pooled], scale=scale)


def harness_samples(summary_path: str | Path, raw_dir: str | Path | None, *, scale: float = 100.0,
                    split: str | None = None) -> dict[str, Sample]:
    """Column name -> per-unit sample, plus ``"Average"`` (the mean over the columns), from a harness summary
    and its raw directory; ``{}`` when there is no raw directory. With ``split`` (``in`` / ``out``), over the
    items of that side of the transfer corpus only: a column with no such item is left out of the average."""
    if raw_dir is None:
        return {}
    obj = read_json(summary_path)
    out = {}
    for col in get(obj, "columns", path=summary_path, kind=list):
        found = harness_column(raw_dir, col, scale=scale, split=split)
        if found is not None:
            out[col["name"]] = found
    if out or split is None:
        out["Average"] = average_sample(list(out.values()))
    return out


def rubric_fact_samples(answers: str | Path, rubric: str | Path) -> dict[str, Sample]:
    """``in`` / ``out`` -> the share (percent) of the MT-Bench rubric's required groups an answer file meets, over
    the groups of that side of the transfer corpus (units: question, turn, group)."""
    from kept.world.judge import rubric_facts

    rows = rubric_facts(rubric_path=rubric, answers_path=answers)
    out = {}
    for split in SPLITS:
        mine = [r for r in rows if r["corpus"] == split]
        if mine:
            out[split] = mean_sample([r["id"] for r in mine], [float(r["met"]) for r in mine], scale=100.0)
    return out


def mtbench_samples(judgments: str | Path | None) -> dict[str, Sample]:
    """"turn1", "turn2" and "average" samples over questions from a FastChat judgment file (1-10)."""
    if judgments is None:
        return {}
    scores: dict[Any, dict[int, float]] = {}
    for i, row in enumerate(read_jsonl(judgments, what="MT-Bench judgments"), start=1):
        where = f"{judgments}:{i}"
        score = row.get("score")
        if score is None or score == -1:
            continue
        qid, turn = str(get(row, "question_id", path=where)), int(get(row, "turn", path=where))
        scores.setdefault(qid, {})[turn] = check_number(score, where=f"{where} score", lo=1, hi=10)
    if not scores:
        raise KeptError(f"{judgments}: no valid judgment")
    out = {}
    for key, turn in (("turn1", 1), ("turn2", 2)):
        ids = [q for q, t in scores.items() if turn in t]
        if ids:
            out[key] = mean_sample(ids, [scores[q][turn] for q in ids])
    ids = list(scores)
    out["average"] = Sample([Stratum(ids, np.array([sum(scores[q].values()) for q in ids]),
                                     np.array([len(scores[q]) for q in ids], dtype=float))])
    return out


def code_samples(details: str | Path | None) -> dict[str, Sample]:
    """"accuracy" (percent) and "ppl" (token-weighted, exp of the mean NLL) over probe items."""
    if details is None:
        return {}
    rows = read_jsonl(details, what="code probe items")
    ids, correct, nll, tokens = [], [], [], []
    for i, row in enumerate(rows, start=1):
        where = f"{details}:{i}"
        ids.append(str(get(row, "id", path=where)))
        correct.append(float(bool(get(row, "correct", path=where))))
        nll.append(check_number(get(row, "nll", path=where), where=f"{where} nll", lo=0))
        tokens.append(check_number(get(row, "tokens", path=where), where=f"{where} tokens", lo=1))
    if not ids:
        raise KeptError(f"{details}: no probe items")
    return {"accuracy": mean_sample(ids, correct, scale=100.0),
            "ppl": Sample([Stratum(ids, np.array(nll), np.array(tokens))], transform=math.exp)}


def longctx_samples(obj: dict[str, Any], *, path: str | Path) -> dict[tuple[str, int], Sample]:
    """(source, length) -> perplexity sample over documents, from ``doc_nll`` (absent in older files: {})."""
    out = {}
    for name, src in get(obj, "sources", path=path, kind=dict).items():
        per_doc = src.get("doc_nll")
        if per_doc is None:
            continue
        ids = [str(d) for d in get(src, "doc_ids", path=path, kind=list)]
        lengths = get(src, "lengths", path=path, kind=list)
        arr = np.asarray(per_doc, dtype=np.float64)  # (docs, lengths)
        if arr.shape != (len(ids), len(lengths)):
            raise KeptError(f"{path}: sources[{name!r}].doc_nll has shape {arr.shape}, expected "
                            f"({len(ids)}, {len(lengths)})")
        for j, length in enumerate(lengths):
            out[(name, int(length))] = Sample([Stratum(ids, arr[:, j], np.full(len(ids), float(length - 1)))],
                                              transform=math.exp)
    return out


def fidelity_samples(obj: dict[str, Any], *, path: str | Path) -> dict[str, Sample]:
    """"KL mean" and "Top-1 agreement" (percent) over the held-out fidelity sequences (absent in older files: {})."""
    kl, top1 = obj.get("kl_per_sequence"), obj.get("top1_per_sequence")
    if kl is None or top1 is None:
        return {}
    if len(kl) != len(top1) or not kl:
        raise KeptError(f"{path}: kl_per_sequence and top1_per_sequence must be non-empty and of equal length")
    ids = [str(i) for i in range(len(kl))]
    return {"KL mean": mean_sample(ids, kl), "Top-1 agreement": mean_sample(ids, top1, scale=100.0)}
