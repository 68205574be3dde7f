"""The paper's tables from per-model result files: CSV, Markdown and LaTeX (booktabs), best values in bold.

Each ``*_table`` function reads labelled input files (:class:`kept.report.inputs.Item`) and returns a
:class:`Table`; :func:`write_table` renders it. Values are shown in the paper's units: H6, KoMMLU and accuracies
in percent, MT-Bench on 1-10. "Best" is taken per variant and per column among the converted students (the
teacher is the reference, not a contender); ties are all bold; a column whose contenders do not differ (as
displayed) has no bold value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kept.atomic import atomic_file
from kept.errors import ConfigError, KeptError
from kept.report import paper
from kept.report.inputs import Item, check_labels, check_number, get, number, read_json

LABELS = ("Variant", "Model")
INIT_NAMES = {"paper": "OPM", "centered": "Centered", "exact": "Exact", "fit": "Fit"}
METHOD_NAMES = {"ut": "UT", "xkd_h": "XKD-h", "xkd_z": "XKD-z"}
FORMAT_NAMES = {"orion": "Orion", "llama3": "Llama-3"}


def model_label(model: str, *, train_init: str) -> str:
    """Display name of a grid model: ``OPM + XKD-z`` for xkd_z trained from init-paper, and so on."""
    if model == "teacher":
        return "Original (teacher)"
    if model.startswith("init-"):
        return INIT_NAMES.get(model[5:], model)
    if model in METHOD_NAMES:
        return f"{INIT_NAMES.get(train_init, train_init)} + {METHOD_NAMES[model]}"
    return model


@dataclass
class Table:
    """A table: label columns ``Variant`` and ``Model``, then numeric columns.

    ``better`` maps a numeric column to "max" or "min" (columns not in it are never bold); ``formats`` maps a
    numeric column to its format spec; ``contender`` marks the rows that compete for bold.
    """

    frame: pd.DataFrame
    better: dict[str, str]
    formats: dict[str, str]
    contender: list[bool]

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in LABELS]


def _rows_to_table(rows: list[dict], *, columns: list[str], better: dict[str, str], formats: dict[str, str],
                   contender: list[bool]) -> Table:
    frame = pd.DataFrame(rows, columns=list(LABELS) + columns)
    for col in columns:
        frame[col] = pd.to_numeric(frame[col]).astype(float)
    return Table(frame=frame, better=better, formats=formats, contender=contender)


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


def h6_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """Table 3: the H6 ablation, one row per variant and grid model, six columns + average, in percent."""
    _group_rows(items, what="H6 table")
    names: list[str] | None = None
    first = ""
    rows, contender = [], []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        cols = get(obj, "columns", path=it.path, kind=list)
        row = {"Variant": it.variant, "Model": model_label(it.model, train_init=train_init)}
        these = []
        for i, col in enumerate(cols):
            where = f"{it.path} columns[{i}]"
            if not isinstance(col, dict):
                raise KeptError(f"{where}: expected an object")
            name = get(col, "name", path=where, kind=str)
            these.append(name)
            row[name] = 100.0 * number(col, "value", path=where, lo=0.0, hi=1.0)
        if not these:
            raise KeptError(f"{it.path}: key 'columns' is empty")
        if names is None:
            names, first = these, it.path
        elif these != names:
            raise KeptError(f"{it.path}: H6 columns {these} differ from {names} in {first}")
        row["Average"] = 100.0 * number(obj, "average", path=it.path, lo=0.0, hi=1.0)
        if paper_reference:
            method = paper.paper_method(it.model, train_init=train_init)
            ref = paper.TABLE3.get(it.variant, {}).get(method) if method else None
            for name in names:
                row[f"{name} (paper)"] = ref[_require_paper_column(name)] if ref else math.nan
            row["Average (paper)"] = ref[-1] if ref else math.nan
        rows.append(row)
        contender.append(it.model != "teacher")
    assert names is not None
    columns = []
    for name in names + ["Average"]:
        columns.append(name)
        if paper_reference:
            columns.append(f"{name} (paper)")
    return _rows_to_table(rows, columns=columns, better={c: "max" for c in columns},
                          formats={c: ".2f" for c in columns}, contender=contender)


def judged(obj: dict, key: str, *, path: str) -> float:
    """An MT-Bench score (1-10). null = every judgment of that cell failed: shown as "–", never invented."""
    if get(obj, key, path=path) is None:
        return math.nan
    return number(obj, key, path=path, lo=1.0, hi=10.0)


def mtbench_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """Table 4: MT-Bench turn 1 / turn 2 / average per chat format (``Item.tag``), on 1-10."""
    keys = _group_rows(items, what="MT-Bench table")
    formats = [f for f in FORMAT_NAMES if any(it.tag == f for it in items)]
    unknown = sorted({it.tag for it in items} - set(FORMAT_NAMES))
    if unknown:
        raise KeptError(f"MT-Bench table: unknown chat format(s) {unknown} (known: {list(FORMAT_NAMES)})")
    cells: dict[tuple[str, str], dict[str, float]] = {k: {} for k in keys}
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        if get(obj, "format", path=it.path) != it.tag:
            raise KeptError(f"{it.path}: key 'format' is {obj['format']!r}, expected {it.tag!r}")
        fmt = FORMAT_NAMES[it.tag]
        for key, head in (("turn1", "Turn 1"), ("turn2", "Turn 2"), ("average", "Avg")):
            cells[(it.variant, it.model)][f"{head} ({fmt})"] = judged(obj, key, path=it.path)
    columns = [f"{h} ({FORMAT_NAMES[f]})" for f in formats for h in ("Turn 1", "Turn 2", "Avg")]
    if paper_reference:
        columns += ["Turn 1 (paper)", "Turn 2 (paper)", "Avg (paper)"]
    rows, contender = [], []
    for variant, model in keys:
        row = {"Variant": variant, "Model": model_label(model, train_init=train_init), **cells[(variant, model)]}
        if paper_reference:
            method = paper.paper_method(model, train_init=train_init)
            ref = paper.TABLE4.get(variant, {}).get(method) if method else None
            for i, head in enumerate(("Turn 1", "Turn 2", "Avg")):
                row[f"{head} (paper)"] = ref[i] if ref else math.nan
        rows.append(row)
        contender.append(model != "teacher")
    return _rows_to_table(rows, columns=columns, better={c: "max" for c in columns},
                          formats={c: ".3f" for c in columns}, contender=contender)


def kommlu_table(*, items: list[Item], train_init: str, paper_reference: bool) -> Table:
    """KoMMLU macro and micro averages in percent (plus the paper's registered Llamion-Base score)."""
    _group_rows(items, what="KoMMLU table")
    rows, contender = [], []
    columns = ["Macro", "Micro"] + (["Paper"] if paper_reference else [])
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        row = {"Variant": it.variant, "Model": model_label(it.model, train_init=train_init),
               "Macro": 100.0 * number(obj, "macro", path=it.path, lo=0.0, hi=1.0),
               "Micro": 100.0 * number(obj, "micro", path=it.path, lo=0.0, hi=1.0)}
        if paper_reference:
            method = paper.paper_method(it.model, train_init=train_init)
            row["Paper"] = paper.KOMMLU.get(it.variant, {}).get(method or "", math.nan)
        rows.append(row)
        contender.append(it.model != "teacher")
    return _rows_to_table(rows, columns=columns, better={c: "max" for c in columns},
                          formats={c: ".2f" for c in columns}, contender=contender)


def code_table(*, items: list[Item], train_init: str) -> Table:
    """Zero-shot transfer, code: perplexity on the code probe and answer accuracy (percent)."""
    _group_rows(items, what="code transfer table")
    rows, contender = [], []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        rows.append({"Variant": it.variant, "Model": model_label(it.model, train_init=train_init),
                     "Code ppl": number(obj, "ppl", path=it.path, lo=1.0),
                     "Code accuracy": 100.0 * number(obj, "accuracy", path=it.path, lo=0.0, hi=1.0)})
        contender.append(it.model != "teacher")
    columns = ["Code ppl", "Code accuracy"]
    return _rows_to_table(rows, columns=columns, better={"Code ppl": "min", "Code accuracy": "max"},
                          formats={"Code ppl": ".3f", "Code accuracy": ".2f"}, contender=contender)


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
    """Zero-shot transfer, long context: perplexity at every evaluated length beyond the training length."""
    keys = _group_rows(items, what="long-context transfer table")
    parsed = {(it.variant, it.model): (it, *read_longctx(it)) for it in items}
    columns: list[str] = []
    cells: dict[tuple[str, str], dict[str, float]] = {k: {} for k in keys}
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
            for src, pairs in sources.items():
                for n, p in pairs:
                    if n > limit:
                        col = f"{src} @{n}"
                        if col not in columns:
                            columns.append(col)
                        cells[(variant, it.model)][col] = p
        if not any(cells[(variant, m)] for v, m in keys if v == variant):
            raise KeptError(f"{first_it.path}: no evaluated length beyond the training length {limit}")
    rows = [{"Variant": v, "Model": model_label(m, train_init=train_init), **cells[(v, m)]} for v, m in keys]
    return _rows_to_table(rows, columns=columns, better={c: "min" for c in columns},
                          formats={c: ".3f" for c in columns}, contender=[m != "teacher" for _, m in keys])


def fidelity_table(*, items: list[Item], train_init: str) -> Table:
    """Fidelity before training: each mapping's ``fidelity.json`` (``Item.path`` = the converted model dir)."""
    _group_rows(items, what="fidelity table")
    rows = []
    for it in items:
        path = Path(it.path) / "fidelity.json"
        obj = read_json(path)
        norm = get(obj, "norm", path=path, kind=str)
        if f"init-{norm}" != it.model:
            raise KeptError(f"{path}: key 'norm' is {norm!r}, expected {it.model[5:]!r} for {it.model}")
        layer = get(obj, "layer_rel_err", path=path, kind=list)
        if not layer:
            raise KeptError(f"{path}: key 'layer_rel_err' is empty")
        rows.append({
            "Variant": it.variant, "Model": model_label(it.model, train_init=train_init),
            "KL mean": number(obj, "kl_mean", path=path, lo=-1e-6),
            "KL max": number(obj, "kl_max", path=path, lo=-1e-6),
            "Top-1 agreement": 100.0 * number(obj, "top1_agreement", path=path, lo=0.0, hi=1.0),
            "Max abs dlogit": number(obj, "max_abs_dlogit", path=path, lo=0.0),
            "Max layer rel. err": max((check_number(e, where=f"{path}: layer_rel_err[{i}]", lo=0.0)
                                       for i, e in enumerate(layer))),
        })
    columns = ["KL mean", "KL max", "Top-1 agreement", "Max abs dlogit", "Max layer rel. err"]
    better = {"KL mean": "min", "KL max": "min", "Top-1 agreement": "max", "Max abs dlogit": "min",
              "Max layer rel. err": "min"}
    formats = {c: ".3g" for c in columns} | {"Top-1 agreement": ".2f"}
    return _rows_to_table(rows, columns=columns, better=better, formats=formats, contender=[True] * len(rows))


# ---- rendering ---------------------------------------------------------------------------------------------


def _fmt(value: float, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def best_mask(table: Table) -> pd.DataFrame:
    """True where a cell holds its variant's best value of the column among the contender rows (ties all);
    nothing is bold where the contenders do not differ (a single one, or all equal as displayed)."""
    frame = table.frame
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    contender = pd.Series(table.contender, index=frame.index)
    for col, direction in table.better.items():
        shown = frame[col].map(lambda v: np.nan if math.isnan(v) else float(format(v, table.formats[col])))
        for _, idx in frame.groupby("Variant", sort=False).groups.items():
            vals = shown.loc[idx][contender.loc[idx]].dropna()
            if vals.nunique() < 2:  # one contender, or all equal: nothing to single out
                continue
            best = vals.max() if direction == "max" else vals.min()
            mask.loc[vals.index[vals == best], col] = True
    return mask


def render_markdown(table: Table) -> str:
    mask = best_mask(table)
    out = table.frame.copy().astype(object)
    for col in table.value_columns:
        out[col] = [f"**{_fmt(v, table.formats[col])}**" if b else _fmt(v, table.formats[col])
                    for v, b in zip(table.frame[col], mask[col])]
    align = ["left"] * len(LABELS) + ["right"] * len(table.value_columns)
    return out.to_markdown(index=False, colalign=align) + "\n"


def render_latex(table: Table) -> str:
    mask = best_mask(table)
    css = pd.DataFrame("", index=table.frame.index, columns=table.frame.columns)
    css[mask] = "textbf:--rwrap;"
    styler = table.frame.style.hide(axis="index")
    styler = styler.format(escape="latex", subset=list(LABELS))
    for col in table.value_columns:
        styler = styler.format(lambda v, spec=table.formats[col]: _fmt(v, spec).replace("–", "--"), subset=[col])
    styler = styler.format_index(escape="latex", axis=1)
    styler = styler.apply(lambda _: css, axis=None)
    text = styler.to_latex(hrules=True, column_format="l" * len(LABELS) + "r" * len(table.value_columns))
    # a \midrule between variants: the body is one line per row, between \midrule and \bottomrule
    lines = text.splitlines()
    start = lines.index("\\midrule") + 1
    variants = list(table.frame["Variant"])
    body = []
    for i, line in enumerate(lines[start:start + len(variants)]):
        if i and variants[i] != variants[i - 1]:
            body.append("\\midrule")
        body.append(line)
    return "\n".join(lines[:start] + body + lines[start + len(variants):]) + "\n"


def write_table(table: Table, *, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    """Render all three formats first, then write each atomically (no partial set on a rendering error)."""
    texts = {
        csv: table.frame.to_csv(index=False, float_format="%.6g"),
        md: render_markdown(table),
        tex: render_latex(table),
    }
    for path, text in texts.items():
        with atomic_file(path, "w", encoding="utf-8") as fh:
            fh.write(text)
