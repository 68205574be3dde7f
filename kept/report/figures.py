"""The paper's figures with seaborn, each written as PNG and PDF.

Every ``*_figure`` function reads labelled inputs (:class:`kept.report.inputs.Item`), builds a long-form frame
(returned, so tests can check what was plotted), draws it and writes both files atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from kept.atomic import atomic_file  # noqa: E402
from kept.errors import KeptError  # noqa: E402
from kept.report.inputs import Item, check_labels, check_number, get, number, read_json, read_jsonl  # noqa: E402
from kept.report.tables import FORMAT_NAMES, judged, model_label, read_longctx  # noqa: E402


def save_figure(fig: plt.Figure, *, png: str | Path, pdf: str | Path, dpi: int) -> None:
    """Render PNG and PDF in memory, then write each atomically."""
    blobs = {}
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        blobs[path] = buf.getvalue()
    plt.close(fig)
    for path, blob in blobs.items():
        with atomic_file(path, "wb") as fh:
            fh.write(blob)


def _theme():
    return sns.axes_style("whitegrid"), sns.plotting_context("paper")


def _require(items: list[Item], what: str) -> None:
    if not items:
        raise KeptError(f"{what}: no input files in the grid")


def _subset_score(obj: dict, names: list[str], *, path: str) -> float:
    """Mean (percent) of the named H6 columns of a harness summary."""
    by_name = {}
    for i, col in enumerate(get(obj, "columns", path=path, kind=list)):
        where = f"{path} columns[{i}]"
        by_name[get(col, "name", path=where, kind=str)] = number(col, "value", path=where, lo=0.0, hi=1.0)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeptError(f"{path}: no column(s) {missing} needed by the recovery subset")
    return 100.0 * sum(by_name[n] for n in names) / len(names)


def recovery_frame(*, items: list[Item], train_init: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve points, teacher levels). Curves: recovery files (``tag`` = step) per method; an ``init-*`` h6
    file adds step 0 to every curve of its variant; a ``teacher`` h6 file gives the reference line. All scores
    are the mean of the recovery subset's columns, in percent."""
    _require(items, "recovery figure")
    subset: dict[str, list[str]] = {}
    points, refs, starts = [], [], []
    for it in items:
        if it.model == "teacher" or it.model.startswith("init-"):
            continue
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        names = [get(c, "name", path=it.path, kind=str) for c in get(obj, "columns", path=it.path, kind=list)]
        if not names:
            raise KeptError(f"{it.path}: key 'columns' is empty")
        if subset.setdefault(it.variant, names) != names:
            raise KeptError(f"{it.path}: recovery columns {names} differ from {subset[it.variant]}")
        step = int(check_number(int(it.tag) if it.tag.isdigit() else it.tag, where=f"{it.path}: step", lo=0))
        points.append({"variant": it.variant, "method": model_label(it.model, train_init=train_init),
                       "step": step, "score": _subset_score(obj, names, path=it.path)})
    if not points:
        raise KeptError("recovery figure: no recovery step files among the inputs")
    for it in items:
        if not (it.model == "teacher" or it.model.startswith("init-")):
            continue
        if it.variant not in subset:
            raise KeptError(f"{it.path}: variant {it.variant!r} has no recovery curve")
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        score = _subset_score(obj, subset[it.variant], path=it.path)
        if it.model == "teacher":
            refs.append({"variant": it.variant, "score": score})
        else:
            starts.append((it.variant, score))
    frame = pd.DataFrame(points)
    for variant, score in starts:
        for method in frame.loc[frame.variant == variant, "method"].unique():
            if not ((frame.variant == variant) & (frame.method == method) & (frame.step == 0)).any():
                frame.loc[len(frame)] = {"variant": variant, "method": method, "step": 0, "score": score}
    return frame.sort_values(["variant", "method", "step"]).reset_index(drop=True), pd.DataFrame(refs)


def recovery_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                    dpi: int = 150) -> pd.DataFrame:
    """Figure 2: H6 (subset) score against training step per method, the teacher as a dashed line."""
    frame, refs = recovery_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.relplot(data=frame, x="step", y="score", hue="method", col="variant", kind="line",
                           marker="o", height=3.2, aspect=1.3, facet_kws={"sharey": False})
        for variant, ax in grid.axes_dict.items():
            for score in refs.loc[refs.variant == variant, "score"] if len(refs) else []:
                ax.axhline(score, ls="--", color="black", lw=1)
                ax.annotate("teacher", (1.0, score), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize="small")
            ax.set_xlabel("training step")
            ax.set_ylabel("H6 subset average (%)")
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def longctx_frame(*, items: list[Item], train_init: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """(variant, model, source, length, ppl) rows and each variant's training length."""
    _require(items, "long-context figure")
    rows, limits = [], {}
    for it in items:
        tml, sources = read_longctx(it)
        if tml is not None:
            limits[it.variant] = max(limits.get(it.variant, 0), tml)
        for src, pairs in sources.items():
            rows += [{"variant": it.variant, "model": model_label(it.model, train_init=train_init),
                      "source": src, "length": n, "ppl": p} for n, p in pairs]
    return pd.DataFrame(rows), limits


def longctx_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                   dpi: int = 150) -> pd.DataFrame:
    """Figure 4: perplexity against input length, teacher and students together, one panel per source (log y
    when the curves span more than a factor of 3)."""
    frame, limits = longctx_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.relplot(data=frame, x="length", y="ppl", hue="model", row="variant", col="source",
                           kind="line", marker="o", height=3.2, aspect=1.3, facet_kws={"sharey": False})
        for (variant, source), ax in grid.axes_dict.items():  # keys are (row, col) = (variant, source)
            ax.set_xscale("log", base=2)
            mine = frame.loc[(frame.variant == variant) & (frame.source == source)]
            lengths = sorted(mine["length"].unique())
            ax.set_xticks(lengths, [str(n) for n in lengths])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            if mine["ppl"].max() / mine["ppl"].min() > 3:  # log scale only when the curves span a wide range
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            if variant in limits:
                ax.axvline(limits[variant], ls=":", color="grey", lw=1)
            ax.set_xlabel("input length (tokens)")
            ax.set_ylabel("perplexity")
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def mtbench_category_frame(*, items: list[Item], train_init: str) -> pd.DataFrame:
    """(variant, model, format, category, score) rows: the average of both turns per category, 1-10."""
    _require(items, "MT-Bench category figure")
    rows = []
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        if get(obj, "format", path=it.path) != it.tag:
            raise KeptError(f"{it.path}: key 'format' is {obj['format']!r}, expected {it.tag!r}")
        cats = get(obj, "by_category", path=it.path, kind=dict)
        if not cats:
            raise KeptError(f"{it.path}: key 'by_category' is empty")
        for cat, scores in cats.items():
            where = f"{it.path} by_category[{cat!r}]"
            if not isinstance(scores, dict):
                raise KeptError(f"{where}: expected an object")
            rows.append({"variant": it.variant, "model": model_label(it.model, train_init=train_init),
                         "format": FORMAT_NAMES.get(it.tag, it.tag), "category": cat,
                         "score": judged(scores, "average", path=where)})
    return pd.DataFrame(rows)


def mtbench_category_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                            dpi: int = 150) -> pd.DataFrame:
    """MT-Bench average score per category, one panel per variant and chat format."""
    frame = mtbench_category_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.catplot(data=frame, x="category", y="score", hue="model", row="variant", col="format",
                           kind="bar", height=3.0, aspect=1.8)
        grid.set(ylim=(0, 10.5))
        grid.set_axis_labels("", "score (1-10)")
        grid.tick_params(axis="x", labelrotation=35)
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def train_loss_frame(*, items: list[Item], train_init: str) -> pd.DataFrame:
    """(variant, method, step, loss) rows from each run's train_log.jsonl."""
    _require(items, "training loss figure")
    rows = []
    for it in items:
        for i, rec in enumerate(read_jsonl(it.path), start=1):
            where = f"{it.path}:{i}"
            rows.append({"variant": it.variant, "method": model_label(it.model, train_init=train_init),
                         "step": int(number(rec, "step", path=where, lo=0)),
                         "loss": number(rec, "loss", path=where)})
    return pd.DataFrame(rows)


def train_loss_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                      dpi: int = 150) -> pd.DataFrame:
    """Training loss against step, one panel per variant and method (UT: cross-entropy, XKD-h: MSE,
    XKD-z: KL, so the y axes are not shared)."""
    frame = train_loss_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.relplot(data=frame, x="step", y="loss", row="variant", col="method", kind="line",
                           height=2.6, aspect=1.3, facet_kws={"sharey": False})
        grid.set_axis_labels("training step", "loss")
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def pilot_frame(*, items: list[Item]) -> pd.DataFrame:
    """(variant, step, site, cos) rows plus site "mean" from cos_mean, from each pilot/cosine.jsonl."""
    _require(items, "pilot figure")
    rows = []
    for it in items:
        for i, rec in enumerate(read_jsonl(it.path), start=1):
            where = f"{it.path}:{i}"
            step = int(number(rec, "step", path=where, lo=0))
            rows.append({"variant": it.variant, "step": step, "site": "mean",
                         "cos": number(rec, "cos_mean", path=where, lo=-1.0 - 1e-6, hi=1.0 + 1e-6)})
            for j, c in enumerate(get(rec, "cos", path=where, kind=list)):
                rows.append({"variant": it.variant, "step": step, "site": str(j),
                             "cos": check_number(c, where=f"{where} cos[{j}]", lo=-1.0 - 1e-6, hi=1.0 + 1e-6)})
    return pd.DataFrame(rows)


def pilot_figure(*, items: list[Item], png: str | Path, pdf: str | Path, dpi: int = 150) -> pd.DataFrame:
    """Appendix-A pilot: cosine between learnt RMSNorm weights and the LayerNorm weights against step
    (thin lines: each norm site; thick: the mean)."""
    frame = pilot_frame(items=items)
    style, context = _theme()
    with style, context:
        variants = list(dict.fromkeys(frame.variant))
        fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.2), squeeze=False)
        for ax, variant in zip(axes[0], variants):
            mine = frame[frame.variant == variant]
            sites = mine[mine.site != "mean"]
            if len(sites):
                sns.lineplot(data=sites, x="step", y="cos", units="site", estimator=None, color="grey",
                             alpha=0.3, lw=0.7, ax=ax)
            sns.lineplot(data=mine[mine.site == "mean"], x="step", y="cos", color="C0", lw=2, ax=ax,
                         label="mean over norm sites")
            ax.set_title(f"variant = {variant}")
            ax.set_xlabel("pilot step")
            ax.set_ylabel("cos(g, γ)")
        save_figure(fig, png=png, pdf=pdf, dpi=dpi)
    return frame

