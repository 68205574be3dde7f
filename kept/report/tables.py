"""The paper's tables from per-model result files: CSV, Markdown and LaTeX (booktabs), with uncertainty.

Each ``*_table`` function reads labelled input files (:class:`kept.report.inputs.Item`) and returns a
:class:`Table`; :func:`write_table` renders it. Values are shown in the paper's units: H6, KoMMLU and accuracies
in percent, MT-Bench on 1-10.

Uncertainty (:mod:`kept.report.stats`): every cell is ``value ± standard error`` over the evaluation's units
(items, questions, documents, sequences): lm-eval's own stderr where the summary has one and the row has one
seed, else a bootstrap over the per-unit data (:mod:`kept.report.units`, read from ``Item.detail``); an average
over columns propagates its columns' errors. A row that pools several seeds shows their mean, the standard
error of that mean over units, and ``(sd x)`` across seeds. "Best" is decided per variant and column among the
students (the teacher is the reference, not a contender): the best row is bold only when a paired sign-flip
permutation test over the same units separates it from the runner-up at p < 0.05; each variant's block ends
with a "paired test" row that gives that p-value or says "not separable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kept.atomic import atomic_file
from kept.errors import ConfigError, KeptError
from kept.grid import is_control, parse as parse_trained, parse_init
from kept.grid import row_name
from kept.report import paper, stats, units
from kept.report.inputs import Item, check_labels, check_number, get, number, read_json

LABELS = ("Variant", "Model")
INIT_NAMES = {"paper": "OPM", "centered": "Centered", "exact": "Exact", "fit": "Fit"}
METHOD_NAMES = {"ut": "UT", "xkd_h": "XKD-h", "xkd_z": "XKD-z"}
FORMAT_NAMES = {"orion": "Orion", "llama3": "Llama-3"}
TEST_ROW = "paired test: best vs runner-up"
UNCERTAINTY_NOTE = (
    "± = one standard error over the evaluation's units (lm-eval's stderr where it reports one and the row has "
    f"one seed, else a {stats.BOOTSTRAP_ITERS}-resample bootstrap over items, questions, documents or sequences; "
    "an average over columns propagates its columns' errors); (sd x) = standard deviation across training seeds "
    "where a row pools several. Bold: the best student, only where a paired sign-flip permutation test over the "
    f"same units separates it from the runner-up at p < {stats.ALPHA}; the paired-test row of each variant gives "
    "p or 'not separable'."
)


def init_label(init: str) -> str:
    """Display name of an init: ``Exact`` for the exact mapping, ``Exact GQA-2 fit`` for it grafted to 2 KV heads
    with the ``fit`` init, ``OPM layer-fit`` for OPM with the layer fit (kept.grid.parse_init)."""
    found = parse_init(init)
    label = INIT_NAMES.get(found.norm, found.norm)
    label += "" if found.kv_heads is None else f" GQA-{found.kv_heads} {found.kv_init}"
    return label + (" layer-fit" if found.layer_fit else "")


def model_label(model: str, *, train_init: str) -> str:
    """Display name of a grid model: ``OPM + XKD-z`` for xkd_z trained from init-paper, ``Exact + XKD-z`` for
    xkd_z@exact, ``OPM + UT (broad corpus)`` for ut+broad; seeds of one student share its label."""
    if model == "teacher":
        return "Original (teacher)"
    if is_control(model):
        return "Teacher + UT"
    if model.startswith("init-"):
        return init_label(model[5:])
    t = parse_trained(model)
    if t is not None:
        init = t.init or train_init
        label = f"{init_label(init)} + {METHOD_NAMES[t.method]}"
        label += f" ({t.corpus} corpus)" if t.corpus else ""
        return label + (", stopped at parity" if t.stop else "")
    return model


@dataclass
class Cell:
    """One model's number in one column: the value, lm-eval's stderr if any (else nan), the per-unit sample."""

    value: float
    se: float = math.nan
    sample: stats.Sample | None = None


@dataclass
class PairedTest:
    """The paired test of one variant's column: best and runner-up row (frame index), p (None: no test)."""

    best: int | None
    runner: int | None
    p: float | None
    note: str

    @property
    def separable(self) -> bool:
        return self.p is not None and self.p < stats.ALPHA


@dataclass
class Table:
    """A table: label columns ``Variant`` and ``Model``, then numeric columns.

    ``frame`` holds the values (the mean over seeds), ``se`` their standard errors over units, ``sd`` the
    spread across seeds (nan for one seed), ``seeds`` the seeds per row; ``better`` maps a numeric column to
    "max" or "min" (columns not in it are never tested nor bold); ``formats`` maps a numeric column to its
    format spec; ``contender`` marks the rows that compete for bold; ``samples`` holds per row and column the
    per-unit sample (seed mean) behind the value, for the paired tests.
    """

    frame: pd.DataFrame
    better: dict[str, str]
    formats: dict[str, str]
    contender: list[bool]
    se: pd.DataFrame | None = None
    sd: pd.DataFrame | None = None
    seeds: list[int] = field(default_factory=list)
    samples: list[dict[str, stats.Sample | None]] = field(default_factory=list)
    inf_text: dict[str, str] = field(default_factory=dict)  # column -> what an infinite value means there

    def __post_init__(self) -> None:
        n = len(self.frame)
        cols = self.value_columns
        if self.se is None:
            self.se = pd.DataFrame(math.nan, index=self.frame.index, columns=cols)
        if self.sd is None:
            self.sd = pd.DataFrame(math.nan, index=self.frame.index, columns=cols)
        if not self.seeds:
            self.seeds = [1] * n
        if not self.samples:
            self.samples = [{} for _ in range(n)]
        self._tests: dict[tuple[str, str], PairedTest] | None = None

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in LABELS]

    @property
    def tests(self) -> dict[tuple[str, str], PairedTest]:
        if self._tests is None:
            self._tests = paired_tests(self)
        return self._tests


def _rows_to_table(rows: list[dict], *, columns: list[str], better: dict[str, str], formats: dict[str, str],
                   contender: list[bool]) -> Table:
    frame = pd.DataFrame(rows, columns=list(LABELS) + columns)
    for col in columns:
        frame[col] = pd.to_numeric(frame[col]).astype(float)
    return Table(frame=frame, better=better, formats=formats, contender=contender)


def build_table(entries: list[tuple[str, str, dict[str, Cell]]], *, columns: list[str], better: dict[str, str],
                formats: dict[str, str], train_init: str, fixed: dict[tuple[str, str], dict[str, float]] | None = None
                ) -> Table:
    """A Table from per-model cells: models that differ only in their seed suffix (kept.grid) pool into one
    row (mean of the seeds' values, the standard error of the seed mean over units, the sd across seeds).
    ``fixed`` gives columns without uncertainty (the paper's numbers) per (variant, row model); ``columns`` is
    the order of all value columns."""
    groups: dict[tuple[str, str], list[dict[str, Cell]]] = {}
    for variant, model, cells in entries:
        groups.setdefault((variant, row_name(model)), []).append(cells)
    rows, se_rows, sd_rows, seeds, samples, contender = [], [], [], [], [], []
    for (variant, model), runs in groups.items():
        row = {"Variant": variant, "Model": model_label(model, train_init=train_init)}
        se_row = dict.fromkeys(columns, math.nan)
        sd_row = dict.fromkeys(columns, math.nan)
        sample_row: dict[str, stats.Sample | None] = dict.fromkeys(columns)
        mine = (fixed or {}).get((variant, model), {})
        for col in columns:
            cells = [r[col] for r in runs if col in r]
            values = [c.value for c in cells]
            if col in mine or not cells or any(math.isnan(v) for v in values):
                row[col] = mine.get(col, math.nan)
                continue
            found = [c.sample for c in cells]
            sample = stats.seed_mean(found) if all(s is not None for s in found) else None
            row[col] = float(np.mean(values))
            sd_row[col] = stats.seed_sd(values)
            sample_row[col] = sample
            if len(cells) == 1 and not math.isnan(cells[0].se):
                se_row[col] = cells[0].se
            elif sample is not None:
                se_row[col] = stats.bootstrap_se(sample)
        rows.append(row)
        se_rows.append(se_row)
        sd_rows.append(sd_row)
        samples.append(sample_row)
        seeds.append(len(runs))
        contender.append(model != "teacher" and not is_control(model))  # the regime control is no student
    table = _rows_to_table(rows, columns=columns, better=better, formats=formats, contender=contender)
    table.se = pd.DataFrame(se_rows, index=table.frame.index, columns=columns).astype(float)
    table.sd = pd.DataFrame(sd_rows, index=table.frame.index, columns=columns).astype(float)
    table.seeds, table.samples = seeds, samples
    return table


def _group_rows(items: list[Item], *, what: str) -> list[tuple[str, str]]:
    """(variant, model) rows in input order; an empty input is an error, not an empty table."""
    if not items:
        raise KeptError(f"{what}: no input files in the grid")
    seen: dict[tuple[str, str], None] = {}
    for it in items:
        seen.setdefault((it.variant, it.model), None)
    return list(seen)


def _require_paper_column(name: str) -> int:
    if name not in paper.H6_COLUMNS:
        raise ConfigError(
            f"report.paper_reference: H6 column {name!r} has no paper number (paper columns: "
            f"{', '.join(paper.H6_COLUMNS)})"
        )
    return paper.H6_COLUMNS.index(name)


def _stderr(col: dict[str, Any], *, where: str, scale: float = 100.0) -> float:
    """lm-eval's stderr of a summary column (scaled), nan where it reported none."""
    se = col.get("stderr")
    return math.nan if se is None else scale * check_number(se, where=f"{where}: key 'stderr'", lo=0.0)


def _paper_rows(items: list[Item], train_init: str, ref: dict[str, dict[str, Any]], pick) -> dict:
    """(variant, row model) -> {column: the paper's number} for the rows the paper has."""
    out = {}
    for it in items:
        method = paper.paper_method(row_name(it.model), train_init=train_init)
        found = ref.get(it.variant, {}).get(method) if method else None
        out[(it.variant, row_name(it.model))] = pick(found)
    return out


def h6_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """Table 3: the H6 ablation, one row per variant and grid model (seeds pooled), six columns + average, in
    percent, each ± its standard error."""
    _group_rows(items, what="H6 table")
    names: list[str] | None = None
    first = ""
    entries = []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        cols = get(obj, "columns", path=it.path, kind=list)
        these, cells = [], {}
        for i, col in enumerate(cols):
            where = f"{it.path} columns[{i}]"
            if not isinstance(col, dict):
                raise KeptError(f"{where}: expected an object")
            name = get(col, "name", path=where, kind=str)
            these.append(name)
            cells[name] = Cell(100.0 * number(col, "value", path=where, lo=0.0, hi=1.0), _stderr(col, where=where))
        if not these:
            raise KeptError(f"{it.path}: key 'columns' is empty")
        if names is None:
            names, first = these, it.path
        elif these != names:
            raise KeptError(f"{it.path}: H6 columns {these} differ from {names} in {first}")
        ses = [cells[n].se for n in these]
        cells["Average"] = Cell(100.0 * number(obj, "average", path=it.path, lo=0.0, hi=1.0),
                                stats.propagate(ses, [1 / len(ses)] * len(ses)))
        for name, sample in units.harness_samples(it.path, it.detail).items():
            cells[name].sample = sample
        entries.append((it.variant, it.model, cells))
    assert names is not None
    columns, fixed = [], None
    for name in names + ["Average"]:
        columns.append(name)
        if paper_reference:
            columns.append(f"{name} (paper)")
    if paper_reference:
        idx = {n: _require_paper_column(n) for n in names}

        def pick(ref):
            out = {f"{n} (paper)": ref[idx[n]] if ref else math.nan for n in names}
            return out | {"Average (paper)": ref[-1] if ref else math.nan}

        fixed = _paper_rows(items, train_init, paper.TABLE3, pick)
    return build_table(entries, columns=columns, better={c: "max" for c in names + ["Average"]},
                       formats={c: ".1f" for c in columns}, train_init=train_init, fixed=fixed)


def judged(obj: dict, key: str, *, path: str) -> float:
    """An MT-Bench score (1-10). null = every judgment of that cell failed: shown as "–", never invented."""
    if get(obj, key, path=path) is None:
        return math.nan
    return number(obj, key, path=path, lo=1.0, hi=10.0)


MTBENCH_KEYS = (("turn1", "Turn 1"), ("turn2", "Turn 2"), ("average", "Avg"))


def mtbench_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """Table 4: MT-Bench turn 1 / turn 2 / average per chat format (``Item.tag``), on 1-10, each ± its standard
    error over questions (``Item.detail``: the FastChat judgment file)."""
    _group_rows(items, what="MT-Bench table")
    formats = [f for f in FORMAT_NAMES if any(it.tag == f for it in items)]
    unknown = sorted({it.tag for it in items} - set(FORMAT_NAMES))
    if unknown:
        raise KeptError(f"MT-Bench table: unknown chat format(s) {unknown} (known: {list(FORMAT_NAMES)})")
    merged: dict[tuple[str, str], dict[str, Cell]] = {}
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        if get(obj, "format", path=it.path) != it.tag:
            raise KeptError(f"{it.path}: key 'format' is {obj['format']!r}, expected {it.tag!r}")
        fmt = FORMAT_NAMES[it.tag]
        found = units.mtbench_samples(it.detail)
        cells = merged.setdefault((it.variant, it.model), {})
        for key, head in MTBENCH_KEYS:
            cells[f"{head} ({fmt})"] = Cell(judged(obj, key, path=it.path), sample=found.get(key))
    measured = [f"{h} ({FORMAT_NAMES[f]})" for f in formats for _, h in MTBENCH_KEYS]
    columns, fixed = list(measured), None
    if paper_reference:
        columns += [f"{h} (paper)" for _, h in MTBENCH_KEYS]
        fixed = _paper_rows(items, train_init, paper.TABLE4, lambda ref: {
            f"{h} (paper)": ref[i] if ref else math.nan for i, (_, h) in enumerate(MTBENCH_KEYS)})
    entries = [(v, m, cells) for (v, m), cells in merged.items()]
    return build_table(entries, columns=columns, better={c: "max" for c in measured},
                       formats={c: ".2f" for c in columns}, train_init=train_init, fixed=fixed)


def kommlu_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """KoMMLU macro and micro averages in percent, ± standard errors (plus the paper's registered Llamion-Base
    score)."""
    _group_rows(items, what="KoMMLU table")
    entries = []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        cols = obj.get("columns") or []
        ses = [_stderr(c, where=f"{it.path} columns[{i}]") for i, c in enumerate(cols)]
        se = ses[0] if len(ses) == 1 else math.nan  # one task: macro = micro = that column
        cells = {"Macro": Cell(100.0 * number(obj, "macro", path=it.path, lo=0.0, hi=1.0), se),
                 "Micro": Cell(100.0 * number(obj, "micro", path=it.path, lo=0.0, hi=1.0), se)}
        if it.detail is not None and cols:
            parts = [units.harness_column(it.detail, c) for c in cols]
            cells["Macro"].sample = stats.average_sample([stats.Sample([st], scale=p.scale)
                                                          for p in parts for st in p.strata])
            cells["Micro"].sample = stats.Sample(
                [stats.Stratum([u for p in parts for st in p.strata for u in st.ids],
                               np.concatenate([st.num for p in parts for st in p.strata]),
                               np.concatenate([st.den for p in parts for st in p.strata]))], scale=100.0)
        entries.append((it.variant, it.model, cells))
    columns, fixed = ["Macro", "Micro"], None
    if paper_reference:
        columns.append("Paper")
        fixed = {(it.variant, row_name(it.model)): {"Paper": paper.KOMMLU.get(it.variant, {}).get(
            paper.paper_method(row_name(it.model), train_init=train_init) or "", math.nan)} for it in items}
    return build_table(entries, columns=columns, better={"Macro": "max", "Micro": "max"},
                       formats={c: ".1f" for c in columns}, train_init=train_init, fixed=fixed)


def code_table(*, items: list[Item], train_init: str) -> Table:
    """Zero-shot transfer, code: perplexity on the code probe and answer accuracy (percent), ± bootstrap
    standard errors over probe items (``Item.detail``: code.items.jsonl)."""
    _group_rows(items, what="code transfer table")
    entries = []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        found = units.code_samples(it.detail)
        entries.append((it.variant, it.model, {
            "Code ppl": Cell(number(obj, "ppl", path=it.path, lo=1.0), sample=found.get("ppl")),
            "Code accuracy": Cell(100.0 * number(obj, "accuracy", path=it.path, lo=0.0, hi=1.0),
                                  sample=found.get("accuracy"))}))
    columns = ["Code ppl", "Code accuracy"]
    return build_table(entries, columns=columns, better={"Code ppl": "min", "Code accuracy": "max"},
                       formats={"Code ppl": ".3f", "Code accuracy": ".1f"}, train_init=train_init)


def read_longctx(item: Item) -> tuple[int | None, dict[str, list[tuple[int, float]]]]:
    """(train_max_length, {source: [(length, ppl), ...]}) from one longctx.json, validated."""
    obj = read_json(item.path)
    check_labels(obj, item, path=item.path)
    tml = obj.get("train_max_length")
    if tml is not None and (isinstance(tml, bool) or not isinstance(tml, int) or tml <= 0):
        raise KeptError(f"{item.path}: key 'train_max_length' is not a positive integer ({tml!r})")
    sources = get(obj, "sources", path=item.path, kind=dict)
    if not sources:
        raise KeptError(f"{item.path}: key 'sources' is empty")
    out = {}
    for name, src in sources.items():
        where = f"{item.path} sources[{name!r}]"
        if not isinstance(src, dict):
            raise KeptError(f"{where}: expected an object")
        lengths = get(src, "lengths", path=where, kind=list)
        ppl = get(src, "ppl", path=where, kind=list)
        if len(lengths) != len(ppl) or not lengths:
            raise KeptError(f"{where}: 'lengths' and 'ppl' must be non-empty and of equal length")
        pairs = []
        for i, (n, p) in enumerate(zip(lengths, ppl)):
            pairs.append((int(check_number(n, where=f"{where} lengths[{i}]", lo=1)),
                          check_number(p, where=f"{where} ppl[{i}]", lo=1.0)))
        out[name] = pairs
    return tml, out


def longctx_table(*, items: list[Item], train_init: str) -> Table:
    """Zero-shot transfer, long context: perplexity at every evaluated length beyond the training length,
    ± bootstrap standard errors over documents (longctx.json's per-document NLL)."""
    keys = _group_rows(items, what="long-context transfer table")
    parsed = {(it.variant, it.model): (it, *read_longctx(it)) for it in items}
    columns: list[str] = []
    cells: dict[tuple[str, str], dict[str, Cell]] = {k: {} for k in keys}
    for variant in dict.fromkeys(v for v, _ in keys):
        mine = [parsed[k] for k in keys if k[0] == variant]
        limits = [tml for _, tml, _ in mine if tml is not None]
        if not limits:
            raise KeptError(f"{mine[0][0].path}: no 'train_max_length' in any long-context file of {variant!r}")
        limit = max(limits)
        first_it, _, first = mine[0]
        for it, _, sources in mine:
            if sorted(sources) != sorted(first) or any(
                    [n for n, _ in sources[s]] != [n for n, _ in first[s]] for s in first):
                raise KeptError(f"{it.path}: sources/lengths differ from {first_it.path}")
            found = units.longctx_samples(read_json(it.path), path=it.path)
            for src, pairs in sources.items():
                for n, p in pairs:
                    if n > limit:
                        col = f"{src} @{n}"
                        if col not in columns:
                            columns.append(col)
                        cells[(variant, it.model)][col] = Cell(p, sample=found.get((src, n)))
        if not any(cells[(variant, m)] for v, m in keys if v == variant):
            raise KeptError(f"{first_it.path}: no evaluated length beyond the training length {limit}")
    entries = [(v, m, cells[(v, m)]) for v, m in keys]
    return build_table(entries, columns=columns, better={c: "min" for c in columns},
                       formats={c: ".3f" for c in columns}, train_init=train_init)


def fidelity_table(*, items: list[Item], train_init: str) -> Table:
    """Fidelity before training: each mapping's ``fidelity.json`` (``Item.path`` = the converted model dir).
    KL mean and top-1 agreement carry bootstrap standard errors over the held-out fidelity sequences; the max
    columns are extremes over those fixed tokens (no interval, never tested)."""
    _group_rows(items, what="fidelity table")
    entries = []
    for it in items:
        path = Path(it.path) / "fidelity.json"
        obj = read_json(path)
        norm = get(obj, "norm", path=path, kind=str)
        if norm != parse_init(it.model.removeprefix("init-")).norm or not it.model.startswith("init-"):
            raise KeptError(f"{path}: key 'norm' is {norm!r}, expected "
                            f"{parse_init(it.model.removeprefix('init-')).norm!r} for {it.model}")
        layer = get(obj, "layer_rel_err", path=path, kind=list)
        if not layer:
            raise KeptError(f"{path}: key 'layer_rel_err' is empty")
        found = units.fidelity_samples(obj, path=path)
        entries.append((it.variant, it.model, {
            "KL mean": Cell(number(obj, "kl_mean", path=path, lo=-1e-6), sample=found.get("KL mean")),
            "KL max": Cell(number(obj, "kl_max", path=path, lo=-1e-6)),
            "Top-1 agreement": Cell(100.0 * number(obj, "top1_agreement", path=path, lo=0.0, hi=1.0),
                                    sample=found.get("Top-1 agreement")),
            "Max abs dlogit": Cell(number(obj, "max_abs_dlogit", path=path, lo=0.0)),
            "Max layer rel. err": Cell(max(check_number(e, where=f"{path}: layer_rel_err[{i}]", lo=0.0)
                                           for i, e in enumerate(layer))),
        }))
    columns = ["KL mean", "KL max", "Top-1 agreement", "Max abs dlogit", "Max layer rel. err"]
    formats = {c: ".3g" for c in columns} | {"Top-1 agreement": ".2f"}
    table = build_table(entries, columns=columns, better={"KL mean": "min", "Top-1 agreement": "max"},
                        formats=formats, train_init=train_init)
    table.contender = [True] * len(table.frame)  # every mapping competes (there is no teacher row)
    return table


# ---- paired tests and rendering ------------------------------------------------------------------------------


def paired_tests(table: Table) -> dict[tuple[str, str], PairedTest]:
    """Per variant and tested column: the best contender, the runner-up and the p-value of a paired sign-flip
    permutation test between them over their shared units (:func:`kept.report.stats.paired_test`)."""
    frame = table.frame
    out = {}
    for variant, idx in frame.groupby("Variant", sort=False).groups.items():
        rows = [i for i in idx if table.contender[frame.index.get_loc(i)]]
        for col, direction in table.better.items():
            vals = [(frame.at[i, col], i) for i in rows if not math.isnan(frame.at[i, col])]
            if len(vals) < 2:
                out[(variant, col)] = PairedTest(None, None, None, "–")
                continue
            vals.sort(key=lambda t: -t[0] if direction == "max" else t[0])
            (_, best), (_, runner) = vals[0], vals[1]
            a = table.samples[frame.index.get_loc(best)].get(col)
            b = table.samples[frame.index.get_loc(runner)].get(col)
            if a is None or b is None:
                out[(variant, col)] = PairedTest(best, runner, None, "no per-item data")
                continue
            p = stats.paired_test(a, b)
            note = f"p = {p:.3g}" if p < stats.ALPHA else f"not separable (p = {p:.2g})"
            out[(variant, col)] = PairedTest(best, runner, p, note)
    return out


def best_mask(table: Table) -> pd.DataFrame:
    """True where a cell holds its variant's best student of a column that a paired test separates from the
    runner-up (p < ALPHA)."""
    mask = pd.DataFrame(False, index=table.frame.index, columns=table.frame.columns)
    for (_, col), test in table.tests.items():
        if test.separable:
            mask.loc[test.best, col] = True
    return mask


def _fmt(value: float, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def cell_text(table: Table, i: int, col: str, *, pm: str = "±") -> str:
    """``value ± se`` (``(sd x)`` added for a row over several seeds); "–" for a missing value."""
    spec = table.formats[col]
    value = table.frame.at[i, col]
    if col in table.inf_text and math.isinf(value):
        return table.inf_text[col]
    text = _fmt(value, spec)
    if math.isnan(value):
        return text
    se, sd = table.se.at[i, col], table.sd.at[i, col]
    if not math.isnan(se):
        text += f" {pm} {_fmt(se, spec)}"
    if not math.isnan(sd):
        text += f" (sd {_fmt(sd, spec)})"
    return text


def _display(table: Table, *, pm: str, bold, escape) -> pd.DataFrame:
    """The table as strings: value cells, a Seeds column when a row pools several, and after each variant's
    rows its paired-test row."""
    mask = best_mask(table)
    frame = table.frame
    multi = max(table.seeds) > 1
    tests = table.tests
    out = []
    variants = list(frame["Variant"])
    for pos, i in enumerate(frame.index):
        row = {"Variant": escape(frame.at[i, "Variant"]), "Model": escape(frame.at[i, "Model"])}
        if multi:
            row["Seeds"] = str(table.seeds[pos])
        for col in table.value_columns:
            text = cell_text(table, i, col, pm=pm)
            row[col] = bold(text) if mask.at[i, col] else text
        out.append(row)
        last = pos + 1 == len(variants) or variants[pos + 1] != variants[pos]
        if last and table.better:
            test_row = {"Variant": escape(variants[pos]), "Model": escape(TEST_ROW)}
            if multi:
                test_row["Seeds"] = ""
            for col in table.value_columns:
                test = tests.get((variants[pos], col))
                test_row[col] = escape(test.note) if test else ""
            out.append(test_row)
    columns = list(LABELS) + (["Seeds"] if multi else []) + table.value_columns
    return pd.DataFrame(out, columns=columns)


def render_markdown(table: Table) -> str:
    shown = _display(table, pm="±", bold=lambda t: f"**{t}**", escape=lambda t: t)
    n_labels = len(shown.columns) - len(table.value_columns)
    align = ["left"] * n_labels + ["right"] * len(table.value_columns)
    return shown.to_markdown(index=False, colalign=align) + "\n\n" + UNCERTAINTY_NOTE + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: Table) -> str:
    shown = _display(table, pm="$\\pm$", bold=lambda t: f"\\textbf{{{t}}}", escape=latex_escape)
    for col in table.value_columns:  # value cells: escape the dash of a missing value only
        shown[col] = [t.replace("–", "--") for t in shown[col]]
    n_labels = len(shown.columns) - len(table.value_columns)
    styler = shown.style.hide(axis="index").format_index(escape="latex", axis=1)
    text = styler.to_latex(hrules=True, column_format="l" * n_labels + "r" * len(table.value_columns))
    # a \midrule between variants: the body is one line per row, between \midrule and \bottomrule
    lines = text.splitlines()
    start = lines.index("\\midrule") + 1
    variants = list(shown["Variant"])
    body = []
    for i, line in enumerate(lines[start:start + len(variants)]):
        if i and variants[i] != variants[i - 1]:
            body.append("\\midrule")
        body.append(line)
    return "\n".join(lines[:start] + body + lines[start + len(variants):]) + "\n"


def frame_with_errors(table: Table) -> pd.DataFrame:
    """The CSV view: labels, seeds, then per value column its value, ``<col> se`` and ``<col> seed sd``."""
    out = table.frame[list(LABELS)].copy()
    out["Seeds"] = table.seeds
    for col in table.value_columns:
        out[col] = table.frame[col]
        out[f"{col} se"] = table.se[col]
        out[f"{col} seed sd"] = table.sd[col]
    return out


def write_table(table: Table, *, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    """Render all three formats first, then write each atomically (no partial set on a rendering error)."""
    texts = {
        csv: frame_with_errors(table).to_csv(index=False, float_format="%.6g"),
        md: render_markdown(table),
        tex: render_latex(table),
    }
    for path, text in texts.items():
        with atomic_file(path, "w", encoding="utf-8") as fh:
            fh.write(text)


# ---- the fast path ----------------------------------------------------------------------------------------------

FAST_STEP, FAST_SHARE = "Stopped at step", "Tokens (share of budget)"


def read_stop(item: Item) -> tuple[int, float]:
    """(last step, its share of the step ceiling) from a train log (``Item.path``). A stop-at-parity run's check
    lines carry ``stop_ceiling``; a run without the check went to its ceiling (share 1)."""
    from kept.jsonl import read_jsonl

    lines = read_jsonl(item.path)
    if not lines:
        raise KeptError(f"{item.path}: empty train log")
    last = int(check_number(get(lines[-1], "step", path=item.path), where=f"{item.path} step", lo=1))
    ceilings = [e["stop_ceiling"] for e in lines if "stop_ceiling" in e]
    ceiling = int(ceilings[-1]) if ceilings else last
    return last, last / ceiling


def fast_path_table(*, items: list[Item], train_init: str) -> Table:
    """The fast path beside the teacher and the full-budget students: per row the step its training ended at and
    its tokens as a share of the full budget (``tag`` "train": the train log), the H6 average (``tag`` "h6") and
    the MT-Bench average per chat format (``tag`` "mtbench-<format>"), each ± its standard error; a row lacks
    the columns it has no file for."""
    _group_rows(items, what="fast-path table")
    parts = []
    h6_items = [it for it in items if it.tag == "h6"]
    if h6_items:
        parts.append((h6_table(items=[Item(it.variant, it.model, it.path, "", it.detail) for it in h6_items],
                               train_init=train_init, paper_reference=False), {"Average": "H6 average"}))
    mt_items = [Item(it.variant, it.model, it.path, it.tag[len("mtbench-"):], it.detail)
                for it in items if it.tag.startswith("mtbench-")]
    if mt_items:
        mt = mtbench_table(items=mt_items, train_init=train_init, paper_reference=False)
        parts.append((mt, {c: f"MT-Bench {c[len('Avg '):]}" for c in mt.value_columns if c.startswith("Avg (")}))
    keys = list(dict.fromkeys((it.variant, model_label(row_name(it.model), train_init=train_init))
                              for it in items))
    rows = {k: {"Variant": k[0], "Model": k[1]} for k in keys}
    se = {k: {} for k in keys}
    sd = {k: {} for k in keys}
    samples: dict[tuple[str, str], dict[str, stats.Sample | None]] = {k: {} for k in keys}
    seeds = dict.fromkeys(keys, 1)
    columns = [FAST_STEP, FAST_SHARE]
    stops: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for it in items:
        if it.tag == "train":
            stops.setdefault((it.variant, model_label(row_name(it.model), train_init=train_init)), []).append(
                read_stop(it))
    for k, found in stops.items():
        rows[k][FAST_STEP] = float(np.mean([s for s, _ in found]))
        rows[k][FAST_SHARE] = float(np.mean([f for _, f in found]))
        sd[k][FAST_STEP] = stats.seed_sd([s for s, _ in found])
        sd[k][FAST_SHARE] = stats.seed_sd([f for _, f in found])
        seeds[k] = max(seeds[k], len(found))
    for table, rename in parts:
        f = table.frame
        for pos, i in enumerate(f.index):
            k = (f.at[i, "Variant"], f.at[i, "Model"])
            seeds[k] = max(seeds[k], table.seeds[pos])
            for old, new in rename.items():
                rows[k][new] = f.at[i, old]
                se[k][new] = table.se.at[i, old]
                sd[k][new] = table.sd.at[i, old]
                samples[k][new] = table.samples[pos].get(old)
        columns += list(rename.values())
    scored = [c for c in columns if c not in (FAST_STEP, FAST_SHARE)]
    out = _rows_to_table([rows[k] for k in keys], columns=columns, better={c: "max" for c in scored},
                         formats={c: ".1f" if c.startswith("H6") else ".0f" if c == FAST_STEP else
                                  ".2f" for c in columns},
                         contender=[k[1] != model_label("teacher", train_init=train_init) for k in keys])
    idx = out.frame.index
    out.se = pd.DataFrame([[se[k].get(c, math.nan) for c in columns] for k in keys], index=idx,
                          columns=columns).astype(float)
    out.sd = pd.DataFrame([[sd[k].get(c, math.nan) for c in columns] for k in keys], index=idx,
                          columns=columns).astype(float)
    out.seeds = [seeds[k] for k in keys]
    out.samples = [samples[k] for k in keys]
    return out


def subset_score(obj: dict, names: list[str], *, path: str) -> tuple[float, float]:
    """Mean (percent) of the named H6 columns of a harness summary, and its standard error propagated from the
    columns' lm-eval stderr (nan if a column has none)."""
    by_name = {}
    for i, col in enumerate(get(obj, "columns", path=path, kind=list)):
        where = f"{path} columns[{i}]"
        se = col.get("stderr")
        by_name[get(col, "name", path=where, kind=str)] = (
            number(col, "value", path=where, lo=0.0, hi=1.0),
            float("nan") if se is None else check_number(se, where=f"{where}: key 'stderr'", lo=0.0))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeptError(f"{path}: no column(s) {missing} needed by the recovery subset")
    value = 100.0 * sum(by_name[n][0] for n in names) / len(names)
    se = 100.0 * stats.propagate([by_name[n][1] for n in names], [1 / len(names)] * len(names))
    return value, se


# ---- the divergence study (issue 19) -------------------------------------------------------------------------

DIVERGENCE_METHODS = ("ut", "xkd_h", "xkd_z")
PARITY_SHARE = 0.99  # "reaches the teacher": this share of the teacher's recovery-subset score
NOT_REACHED = "not within budget"


def read_conversion(model_dir: str | Path) -> dict[str, Any]:
    """A converted model dir's family, exactness class and changed modules (its conversion.json)."""
    path = Path(model_dir) / "conversion.json"
    obj = read_json(path)
    return {"family": obj.get("family", "orion"), "exactness": obj.get("exactness"),
            "modules": [d.get("module") for d in obj.get("divergences") or []]}


def _regained(s: float, s_se: float, m: float, m_se: float, t: float, t_se: float) -> tuple[float, float]:
    """Share of the teacher's margin over the mapping that a student regains, ``(S - M) / (T - M)`` in percent, with
    its delta-method standard error (the three scores' errors taken as independent); nan where the margin
    ``T - M`` is not distinguishable from zero (within two of its standard errors)."""
    margin, margin_se = t - m, math.hypot(t_se if t_se == t_se else 0.0, m_se if m_se == m_se else 0.0)
    if not margin or abs(margin) <= 2 * margin_se:
        return math.nan, math.nan
    r = (s - m) / margin
    parts = [(s_se, 1 / margin), (m_se, (s - t) / margin**2), (t_se, -(s - m) / margin**2)]
    se = math.sqrt(sum((e * d) ** 2 for e, d in parts if e == e))
    return 100.0 * r, 100.0 * se


def recovery_points(items: list[tuple[Item, int]]) -> tuple[dict[str, list[str]], list[tuple[Item, int, float, float]]]:
    """Each (item, step)'s score on its variant's recovery subset, ``(subsets, [(item, step, score, se)])``. A
    recovery summary (suite "recovery") defines its variant's subset (every one of a variant must name the same
    columns); a full H6 summary at a step (a student's final model, evaluated in full: the last snapshot is not
    evaluated twice) is scored on the subset of its variant's recovery summaries."""
    subsets: dict[str, list[str]] = {}
    points, full = [], []
    for it, step in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        if obj.get("suite") == "h6":
            full.append((it, step, obj))
            continue
        names = [get(c, "name", path=it.path, kind=str) for c in get(obj, "columns", path=it.path, kind=list)]
        if not names:
            raise KeptError(f"{it.path}: key 'columns' is empty")
        if subsets.setdefault(it.variant, names) != names:
            raise KeptError(f"{it.path}: recovery columns {names} differ from {subsets[it.variant]}")
        points.append((it, step, *subset_score(obj, names, path=it.path)))
    for it, step, obj in full:
        if it.variant not in subsets:
            raise KeptError(f"{it.path}: an H6 summary on a recovery curve, but variant {it.variant!r} has no "
                            "recovery summary to take the subset's columns from")
        points.append((it, step, *subset_score(obj, subsets[it.variant], path=it.path)))
    return subsets, points


def tokens_per_step(path: str | Path) -> float:
    """Tokens one optimizer step reads (global batch x length), from a train log's ``tokens`` and ``step``."""
    from kept.jsonl import read_jsonl

    for line in read_jsonl(path):
        if "tokens" in line and line.get("step"):
            return check_number(line["tokens"], where=f"{path}: key 'tokens'", lo=0) / line["step"]
    raise KeptError(f"{path}: no train-log line with 'tokens' and 'step'")


def tokens_to_parity(curve: dict[int, float], target: float, per_step: float) -> float:
    """Tokens at the first point of a recovery curve (step -> score) at or above ``target``; inf if none is."""
    for step in sorted(curve):
        if curve[step] >= target:
            return step * per_step
    return math.inf


def divergence_table(*, items: list[Item], train_init: str) -> Table:
    """The divergence study: one row per variant (its source family -> Llama) and init mapping: the mapping's
    exactness class and changed modules (in the row label), its fidelity before training (KL, top-1), the H6
    average of the teacher, of the mapping alone and of UT / XKD-h / XKD-z trained from it at the matched budget,
    and the share of the teacher's margin each regains; with MT-Bench items, the same averages per chat format.

    Where the variant has recovery curves, the tokens each student needed to reach :data:`PARITY_SHARE` of the
    teacher's score on the recovery subset of H6: the first snapshot (step 0: the mapping itself) at or above it,
    times the tokens of one step; "not within budget" if none is. Its resolution is one snapshot interval.

    ``items``: tag ``h6`` (the H6 table's inputs), ``fidelity`` (each init's model dir: fidelity.json and
    conversion.json), ``mtbench-<format>`` (the MT-Bench table's inputs), ``recovery-<step>`` (a student's
    recovery summary at that step, primary seed) and ``train`` (its train log, for the tokens of a step). Seeds
    are pooled as in the H6 table.
    """
    from dataclasses import replace

    h6_items = [replace(it, tag="") for it in items if it.tag == "h6"]
    fid_items = [replace(it, tag="") for it in items if it.tag == "fidelity"]
    mt_items = [replace(it, tag=it.tag.removeprefix("mtbench-")) for it in items if it.tag.startswith("mtbench-")]
    rec_items = [it for it in items if it.tag.startswith("recovery-") and it.tag[len("recovery-"):].isdigit()]
    logs = {(it.variant, model_label(row_name(it.model), train_init=train_init)): it.path
            for it in items if it.tag == "train"}
    unknown = sorted({it.tag for it in items} - {"h6", "fidelity", "train"} - {it.tag for it in rec_items}
                     - {f"mtbench-{f}" for f in FORMAT_NAMES})
    if unknown or not h6_items or not fid_items:
        raise KeptError(f"divergence table: needs h6 and fidelity inputs (tags found: "
                        f"{sorted({it.tag for it in items})}, unknown {unknown})")
    h6 = h6_table(items=h6_items, train_init=train_init, paper_reference=False)
    fid = fidelity_table(items=fid_items, train_init=train_init)
    mt = mtbench_table(items=mt_items, train_init=train_init, paper_reference=False) if mt_items else None
    mt_cols = [c for c in (mt.value_columns if mt else []) if c.startswith("Avg")]

    def cell(table: Table, variant: str, label: str, col: str) -> tuple[float, float, float, int]:
        """(value, se, seed sd, seeds) of one cell of a source table; nan (one seed) where it has no such row."""
        frame = table.frame
        hit = [pos for pos, i in enumerate(frame.index)
               if frame.at[i, "Variant"] == variant and frame.at[i, "Model"] == label]
        if not hit:
            return math.nan, math.nan, math.nan, 1
        i = frame.index[hit[0]]
        return (float(frame.at[i, col]), float(table.se.at[i, col]), float(table.sd.at[i, col]),
                table.seeds[hit[0]])

    # recovery curves: (variant, row label) -> {step: subset score}; the subset's columns per variant
    curves: dict[tuple[str, str], dict[int, float]] = {}
    subset, points = recovery_points([(it, int(it.tag[len("recovery-"):])) for it in rec_items])
    for it, step, score, _ in points:
        curves.setdefault((it.variant, model_label(row_name(it.model), train_init=train_init)), {})[step] = score
    h6_paths = {(it.variant, model_label(row_name(it.model), train_init=train_init)): it.path for it in h6_items}

    def subset_of(variant: str, label: str) -> float:
        path = h6_paths.get((variant, label))
        return math.nan if path is None else subset_score(read_json(path), subset[variant], path=path)[0]

    parity_cols = [f"Tokens to {PARITY_SHARE:g} {METHOD_NAMES[m]}" for m in DIVERGENCE_METHODS] if curves else []
    columns = ["KL", "Top-1 (%)", "H6 teacher", "H6 mapping"] + [f"H6 {METHOD_NAMES[m]}" for m in DIVERGENCE_METHODS]
    columns += [f"{METHOD_NAMES[m]} regained (%)" for m in DIVERGENCE_METHODS] + parity_cols
    for c in mt_cols:
        columns += [f"MT {c.removeprefix('Avg ')} {who}" for who in ("teacher", "mapping")]
        columns += [f"MT {c.removeprefix('Avg ')} {METHOD_NAMES[m]}" for m in DIVERGENCE_METHODS]
    rows, ses, sds, seeds = [], [], [], []
    for it in fid_items:
        init = it.model.removeprefix("init-")
        conv = read_conversion(it.path)
        mapping, teacher = init_label(init), model_label("teacher", train_init=train_init)
        changed = ", ".join(m for m in dict.fromkeys(conv["modules"]) if m) or "none"
        label = f"{conv['family']} -> Llama, {mapping}: {conv['exactness'] or '?'} (changed: {changed})"
        vals, err, sd, row_seeds = {}, {}, {}, [1]

        def put(col: str, found: tuple[float, float, float, int]) -> tuple[float, float]:
            """Set one column from a source cell; (value, se) for the shares computed from it."""
            vals[col], err[col], sd[col] = found[:3]
            row_seeds.append(found[3])
            return found[0], found[1]

        put("KL", cell(fid, it.variant, mapping, "KL mean"))
        put("Top-1 (%)", cell(fid, it.variant, mapping, "Top-1 agreement"))
        t = put("H6 teacher", cell(h6, it.variant, teacher, "Average"))
        m = put("H6 mapping", cell(h6, it.variant, mapping, "Average"))
        if it.variant in subset:  # the curves' start (the mapping) and the parity target, read once per row
            start, target = subset_of(it.variant, mapping), PARITY_SHARE * subset_of(it.variant, teacher)
        for meth in DIVERGENCE_METHODS:
            name = f"{mapping} + {METHOD_NAMES[meth]}"
            s = put(f"H6 {METHOD_NAMES[meth]}", cell(h6, it.variant, name, "Average"))
            key = f"{METHOD_NAMES[meth]} regained (%)"
            vals[key], err[key] = _regained(*s, *m, *t) if not math.isnan(s[0]) else (math.nan, math.nan)
            if parity_cols:
                col = f"Tokens to {PARITY_SHARE:g} {METHOD_NAMES[meth]}"
                vals[col], err[col] = math.nan, math.nan
                curve = curves.get((it.variant, name))
                if curve and (it.variant, name) in logs:
                    vals[col] = tokens_to_parity({0: start, **curve}, target, tokens_per_step(logs[(it.variant, name)]))
        for c in mt_cols:
            fmt = c.removeprefix("Avg ")
            for who, lab in (("teacher", teacher), ("mapping", mapping)):
                put(f"MT {fmt} {who}", cell(mt, it.variant, lab, c))
            for meth in DIVERGENCE_METHODS:
                put(f"MT {fmt} {METHOD_NAMES[meth]}", cell(mt, it.variant, f"{mapping} + {METHOD_NAMES[meth]}", c))
        rows.append({"Variant": it.variant, "Model": label, **vals})
        ses.append(err)
        sds.append(sd)
        seeds.append(max(row_seeds))
    frame = pd.DataFrame(rows, columns=list(LABELS) + columns)
    formats = {c: ".1f" for c in columns} | {"KL": ".3g", "Top-1 (%)": ".1f"}
    formats |= {c: ".2f" for c in columns if c.startswith("MT ")} | {c: ".3g" for c in parity_cols}
    return Table(frame=frame, better={}, formats=formats, contender=[False] * len(frame),
                 se=pd.DataFrame(ses, columns=columns, index=frame.index),
                 sd=pd.DataFrame(sds, columns=columns, index=frame.index).astype(float), seeds=seeds,
                 inf_text=dict.fromkeys(parity_cols, NOT_REACHED))


# ---- the graft (issue 28) ------------------------------------------------------------------------------------


def graft_table(*, items: list[Item], train_init: str) -> Table:
    """The MHA -> GQA graft: one row per variant and init, the variant's primary mapping without a graft first,
    then per G (KV heads kept) each closed-form init of the merged heads (``mean``, ``aligned``, ``fit``). Columns:
    the KV heads (the converted config's ``num_key_value_heads``), the KV-cache bytes per token measured in
    transformers' cache (tag ``kv``: kv_cache.json, rule kv_cache), the mapping's fidelity before training (KL
    with its SE over the held-out fidelity sequences, KL over ``mean``'s at the same G, top-1 agreement, the largest
    logit difference), and the divergence table's H6 of the teacher, of the mapping and after UT / XKD-h / XKD-z
    from it at the matched budget (± SE, seeds pooled), and, where the variant has recovery curves, the tokens each
    needed to reach :data:`PARITY_SHARE` of the teacher.

    ``items``: the divergence table's (tags ``h6``, ``fidelity``, ``train``, ``recovery-<step>``) plus ``kv``."""
    from dataclasses import replace

    kv: dict[tuple[str, str], float] = {}
    for it in items:
        if it.tag == "kv":
            obj = read_json(it.path)
            check_labels(obj, it, path=it.path)
            kv[(it.variant, it.model)] = number(obj, "kv_cache_bytes_per_token", path=it.path, lo=0.0)
    rest = [it for it in items if it.tag != "kv"]
    div = divergence_table(items=rest, train_init=train_init)
    fid_items = [it for it in rest if it.tag == "fidelity"]
    fid = fidelity_table(items=[replace(it, tag="") for it in fid_items], train_init=train_init)
    kl_of = {(it.variant, it.model): float(fid.frame.at[fid.frame.index[i], "KL mean"]) for i, it in enumerate(fid_items)}
    keep = [c for c in div.value_columns if c.startswith(("H6 ", "Tokens to"))]
    columns = ["KV heads", "KV bytes/token", "KL", "KL / mean", "Top-1 (%)", "Max |dlogit|"] + keep
    rows, ses, sds = [], [], []
    for i, it in enumerate(fid_items):
        init = parse_init(it.model.removeprefix("init-"))
        if (it.variant, it.model) not in kv:
            raise KeptError(f"graft table: no KV-cache measurement (kv_cache.json) for {it.variant} {it.model}")
        cfg_path = Path(it.path) / "config.json"
        heads = number(read_json(cfg_path), "num_key_value_heads", path=cfg_path, lo=1)
        if init.kv_heads is not None and heads != init.kv_heads:
            raise KeptError(f"{cfg_path}: num_key_value_heads is {heads:g}, but the init {it.model} names "
                            f"{init.kv_heads}")
        mean = kl_of.get((it.variant, f"init-{init.norm}-kv{init.kv_heads}-mean"), math.nan)
        d, f = div.frame.index[i], fid.frame.index[i]
        label = (f"{init_label(init.norm)}, no graft" if init.kv_heads is None
                 else f"GQA-{init.kv_heads} {init.kv_init} (from {init_label(init.norm)})")
        vals = {"KV heads": heads, "KV bytes/token": kv[(it.variant, it.model)], "KL": div.frame.at[d, "KL"],
                "KL / mean": div.frame.at[d, "KL"] / mean if init.kv_heads is not None and mean > 0 else math.nan,
                "Top-1 (%)": div.frame.at[d, "Top-1 (%)"], "Max |dlogit|": fid.frame.at[f, "Max abs dlogit"]}
        vals |= {c: div.frame.at[d, c] for c in keep}
        rows.append({"Variant": it.variant, "Model": label, **vals})
        ses.append({c: div.se.at[d, c] if c in div.se.columns and c != "Max |dlogit|" else math.nan for c in columns}
                   | {"KL": div.se.at[d, "KL"], "Top-1 (%)": div.se.at[d, "Top-1 (%)"]})
        sds.append({c: div.sd.at[d, c] if c in div.sd.columns else math.nan for c in columns})
    frame = pd.DataFrame(rows, columns=list(LABELS) + columns)
    formats = {c: ".1f" for c in columns} | {"KV heads": ".0f", "KV bytes/token": ".0f", "KL": ".3g",
                                             "KL / mean": ".2f", "Max |dlogit|": ".3g"}
    formats |= {c: ".3g" for c in keep if c.startswith("Tokens to")}
    return Table(frame=frame, better={}, formats=formats, contender=[False] * len(frame),
                 se=pd.DataFrame(ses, columns=columns, index=frame.index),
                 sd=pd.DataFrame(sds, columns=columns, index=frame.index).astype(float), seeds=list(div.seeds),
                 inf_text={c: NOT_REACHED for c in keep if c.startswith("Tokens to")})
