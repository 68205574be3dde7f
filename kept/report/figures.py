"""The paper's figures with seaborn, each written as PNG and PDF.

Every ``*_figure`` function reads labelled inputs (:class:`kept.report.inputs.Item`), builds a long-form frame
(returned, so tests can check what was plotted), draws it and writes both files atomically. Error bars and bands
are ± one standard error over the evaluation's units, as in the tables (kept.report.stats): lm-eval's stderr,
or a bootstrap over items, questions or documents; a frame's ``se`` column holds them (nan: none available).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from kept.atomic import atomic_file  # noqa: E402
from kept.errors import KeptError  # noqa: E402
from kept.report import stats, units  # noqa: E402
from kept.report.inputs import Item, check_labels, check_number, get, number, read_json, read_jsonl  # noqa: E402
from kept.report.tables import (  # noqa: E402
    DIVERGENCE_METHODS, FORMAT_NAMES, INIT_NAMES, METHOD_NAMES, PARITY_SHARE, divergence_table, h6_table, judged, model_label,
    mtbench_table, read_conversion, read_longctx, recovery_points, subset_score,
)


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


def recovery_frame(*, items: list[Item], train_init: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve points, teacher levels). Curves: recovery files (``tag`` = step) per trained student; an
    ``init-*`` h6 file adds step 0 to every curve that starts from that mapping; a ``teacher`` h6 file gives the
    reference line. Scores are the mean of the recovery subset's columns, in percent, with a standard error."""
    from kept.grid import parse

    _require(items, "recovery figure")
    refs, starts = [], []
    init_of: dict[tuple[str, str], str] = {}
    steps = [(it, int(check_number(int(it.tag) if it.tag.isdigit() else it.tag, where=f"{it.path}: step", lo=0)))
             for it in items if not (it.model == "teacher" or it.model.startswith("init-"))]
    subset, found = recovery_points(steps)
    points = []
    for it, step, score, se in found:
        label = model_label(it.model, train_init=train_init)
        t = parse(it.model)
        init_of[(it.variant, label)] = (t.init if t and t.init else train_init)
        points.append({"variant": it.variant, "method": label, "step": step, "score": score, "se": se})
    if not points:
        raise KeptError("recovery figure: no recovery step files among the inputs")
    for it in items:
        if not (it.model == "teacher" or it.model.startswith("init-")):
            continue
        if it.variant not in subset:
            raise KeptError(f"{it.path}: variant {it.variant!r} has no recovery curve")
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        score, se = subset_score(obj, subset[it.variant], path=it.path)
        if it.model == "teacher":
            refs.append({"variant": it.variant, "score": score, "se": se})
        else:
            starts.append((it.variant, it.model[5:], score, se))
    frame = pd.DataFrame(points)
    for variant, init, score, se in starts:
        for method in frame.loc[frame.variant == variant, "method"].unique():
            if init_of.get((variant, method)) != init:
                continue
            if not ((frame.variant == variant) & (frame.method == method) & (frame.step == 0)).any():
                frame.loc[len(frame)] = {"variant": variant, "method": method, "step": 0, "score": score, "se": se}
    return frame.sort_values(["variant", "method", "step"]).reset_index(drop=True), pd.DataFrame(refs)


def _bands(ax, frame: pd.DataFrame, *, x: str, y: str, hue: str, palette: dict) -> None:
    """± se bands behind the lines of ``frame`` (rows without a finite se get none)."""
    for key, part in frame.groupby(hue, sort=False):
        part = part.sort_values(x)
        ok = part["se"].notna()
        if ok.any():
            ax.fill_between(part[x][ok], (part[y] - part["se"])[ok], (part[y] + part["se"])[ok],
                            color=palette[key], alpha=0.15, lw=0)


def recovery_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                    dpi: int = 150) -> pd.DataFrame:
    """Figure 2: H6 (subset) score against training step per trained student, ± one standard error (band), the
    teacher as a dashed line."""
    frame, refs = recovery_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        methods = list(dict.fromkeys(frame.method))
        palette = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
        grid = sns.relplot(data=frame, x="step", y="score", hue="method", col="variant", kind="line",
                           marker="o", height=3.2, aspect=1.3, palette=palette, errorbar=None,
                           facet_kws={"sharey": False})
        for variant, ax in grid.axes_dict.items():
            _bands(ax, frame[frame.variant == variant], x="step", y="score", hue="method", palette=palette)
            for score in refs.loc[refs.variant == variant, "score"] if len(refs) else []:
                ax.axhline(score, ls="--", color="black", lw=1)
                ax.annotate("teacher", (1.0, score), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize="small")
            ax.set_xlabel("training step")
            ax.set_ylabel("H6 subset average (%)")
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def longctx_frame(*, items: list[Item], train_init: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """(variant, model, source, length, ppl, se) rows and each variant's training length: ppl is the mean over a
    student's seeds, se its bootstrap standard error over documents (nan for files without per-document NLL)."""
    _require(items, "long-context figure")
    pooled: dict[tuple[str, str, str, int], tuple[list[float], list[stats.Sample | None]]] = {}
    limits: dict[str, int] = {}
    for it in items:
        tml, sources = read_longctx(it)
        found = units.longctx_samples(read_json(it.path), path=it.path)
        if tml is not None:
            limits[it.variant] = max(limits.get(it.variant, 0), tml)
        for src, pairs in sources.items():
            for n, p in pairs:
                key = (it.variant, model_label(it.model, train_init=train_init), src, n)
                values, samples = pooled.setdefault(key, ([], []))
                values.append(p)
                samples.append(found.get((src, n)))
    rows = []
    for (variant, model, src, n), (values, samples) in pooled.items():
        se = stats.bootstrap_se(stats.seed_mean(samples)) if all(x is not None for x in samples) else float("nan")
        rows.append({"variant": variant, "model": model, "source": src, "length": n,
                     "ppl": sum(values) / len(values), "se": se})
    return pd.DataFrame(rows), limits


def longctx_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                   dpi: int = 150) -> pd.DataFrame:
    """Figure 4: perplexity against input length, teacher and students together, one panel per source (log y
    when the curves span more than a factor of 3), ± one standard error over documents (bands)."""
    frame, limits = longctx_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        models = list(dict.fromkeys(frame.model))
        palette = dict(zip(models, sns.color_palette(n_colors=len(models))))
        grid = sns.relplot(data=frame, x="length", y="ppl", hue="model", row="variant", col="source",
                           kind="line", marker="o", height=3.2, aspect=1.3, palette=palette, errorbar=None,
                           facet_kws={"sharey": False})
        for (variant, source), ax in grid.axes_dict.items():  # keys are (row, col) = (variant, source)
            ax.set_xscale("log", base=2)
            mine = frame.loc[(frame.variant == variant) & (frame.source == source)]
            _bands(ax, mine, x="length", y="ppl", hue="model", palette=palette)
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


def _category_samples(judgments: str | None, cats: dict[str, Any]) -> dict[str, stats.Sample]:
    """Per category, the sample of per-question mean scores (both turns) from a judgment file, the questions of
    each category as the summary lists them (``by_category[cat]["question_ids"]``; none listed: no sample)."""
    if judgments is None:
        return {}
    scores: dict[str, list[float]] = {}
    for row in read_jsonl(judgments):
        if row.get("score") not in (None, -1):
            scores.setdefault(str(row["question_id"]), []).append(float(row["score"]))
    out = {}
    for cat, entry in cats.items():
        ids = [str(q) for q in (entry.get("question_ids") or []) if str(q) in scores]
        if ids:
            out[cat] = stats.mean_sample(ids, [sum(scores[q]) / len(scores[q]) for q in ids])
    return out


def mtbench_category_frame(*, items: list[Item], train_init: str) -> pd.DataFrame:
    """(variant, model, format, category, score, se) rows: the average of both turns per category, 1-10 (the
    mean over a student's seeds), and its standard error over the category's questions (nan without the
    judgment file or question ids)."""
    _require(items, "MT-Bench category figure")
    pooled: dict[tuple[str, str, str, str], tuple[list[float], list[stats.Sample | None]]] = {}
    for it in items:
        obj = read_json(it.path)
        check_labels(obj, it, path=it.path)
        if get(obj, "format", path=it.path) != it.tag:
            raise KeptError(f"{it.path}: key 'format' is {obj['format']!r}, expected {it.tag!r}")
        cats = get(obj, "by_category", path=it.path, kind=dict)
        if not cats:
            raise KeptError(f"{it.path}: key 'by_category' is empty")
        for cat, scores in cats.items():
            if not isinstance(scores, dict):
                raise KeptError(f"{it.path} by_category[{cat!r}]: expected an object")
        found = _category_samples(it.detail, cats)
        for cat, scores in cats.items():
            key = (it.variant, model_label(it.model, train_init=train_init), FORMAT_NAMES.get(it.tag, it.tag), cat)
            values, samples = pooled.setdefault(key, ([], []))
            values.append(judged(scores, "average", path=f"{it.path} by_category[{cat!r}]"))
            samples.append(found.get(cat))
    rows = []
    for (variant, model, fmt, cat), (values, samples) in pooled.items():
        se = float("nan")
        if all(x is not None for x in samples):
            se = stats.bootstrap_se(stats.seed_mean(samples))
        rows.append({"variant": variant, "model": model, "format": fmt, "category": cat,
                     "score": sum(values) / len(values), "se": se})
    return pd.DataFrame(rows)


def mtbench_category_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                            dpi: int = 150) -> pd.DataFrame:
    """MT-Bench average score per category, one panel per variant and chat format, ± one standard error over
    the category's questions."""
    frame = mtbench_category_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.catplot(data=frame, x="category", y="score", hue="model", row="variant", col="format",
                           kind="bar", height=3.0, aspect=1.8, errorbar=None)
        for (variant, fmt), ax in grid.axes_dict.items():
            mine = frame[(frame.variant == variant) & (frame.format == fmt)]
            for container, (_, part) in zip(ax.containers, mine.groupby("model", sort=False)):
                part = part.set_index("category")
                for bar, label in zip(container, [t.get_text() for t in ax.get_xticklabels()]):
                    if label in part.index and pd.notna(part.at[label, "se"]):
                        ax.errorbar(bar.get_x() + bar.get_width() / 2, part.at[label, "score"],
                                    yerr=part.at[label, "se"], color="black", lw=0.8, capsize=1.5)
        grid.set(ylim=(0, 10.5))
        grid.set_axis_labels("", "score (1-10)")
        grid.tick_params(axis="x", labelrotation=35)
        save_figure(grid.figure, png=png, pdf=pdf, dpi=dpi)
    return frame


def _spread_frame(table, columns: dict[str, str]) -> pd.DataFrame:
    """(variant, model, panel, score, se, seeds, teacher) rows of the named table columns (column -> panel)."""
    rows = []
    frame = table.frame
    for pos, i in enumerate(frame.index):
        for col, panel in columns.items():
            if col not in frame or pd.isna(frame.at[i, col]):
                continue
            rows.append({"variant": frame.at[i, "Variant"], "model": frame.at[i, "Model"], "panel": panel,
                         "score": frame.at[i, col], "se": table.se.at[i, col], "seeds": table.seeds[pos],
                         "teacher": not table.contender[pos]})
    return pd.DataFrame(rows)


def _spread_plot(frame: pd.DataFrame, *, xlabel: str, floor: float | None, reference: str | None, png, pdf,
                 dpi) -> None:
    """Rows = variants, columns = panels: each student's score ± se as a point with an error bar, the teacher
    in the panel's own terms as a dashed line (and, where ``reference`` names another panel, the teacher there
    as a dash-dotted one), the floor (if any) dotted."""
    style, context = _theme()
    with style, context:
        variants = list(dict.fromkeys(frame.variant))
        panels = list(dict.fromkeys(frame.panel))
        students = frame[~frame.teacher]
        n_rows = max(students.groupby("variant").model.nunique().max(), 1)
        fig, axes = plt.subplots(len(variants), len(panels), figsize=(4.6 * len(panels), (0.8 + 0.3 * n_rows) * len(variants)),
                                 squeeze=False, sharey="row")
        hi = max(frame.score.max() + frame.se.fillna(0).max(), (floor or 0) + 1)
        for r, variant in enumerate(variants):
            for c, panel in enumerate(panels):
                ax = axes[r][c]
                mine = frame[(frame.variant == variant) & (frame.panel == panel)]
                studs = mine[~mine.teacher]
                ax.errorbar(studs.score, studs.model, xerr=studs.se.fillna(0), fmt="o", color="C0", ecolor="C0",
                            capsize=2, lw=1)
                for score in mine[mine.teacher].score:
                    ax.axvline(score, ls="--", color="black", lw=1, label=f"teacher ({panel})")
                if reference and panel != reference:
                    ref = frame[(frame.variant == variant) & (frame.panel == reference) & frame.teacher]
                    for score in ref.score:
                        ax.axvline(score, ls="-.", color="dimgrey", lw=1, label=f"teacher ({reference}) in the other panels")
                if floor is not None:
                    ax.axvline(floor, ls=":", color="grey", lw=1, label="floor")
                ax.set_xlim((floor if floor is not None else 0) - 0.05 * hi, 1.05 * hi)
                ax.set_title(f"{variant}: {panel}")
                ax.set_xlabel(xlabel if r == len(variants) - 1 else "")
                ax.set_ylabel("")
            axes[r][0].invert_yaxis()
        legend_off_the_data(fig)
        save_figure(fig, png=png, pdf=pdf, dpi=dpi)


def legend_off_the_data(fig: plt.Figure) -> None:
    """One legend for the whole figure, below the panels (never over a point): the axes' labelled lines, each
    label once."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        fig.tight_layout()
        return
    height = fig.get_size_inches()[1]
    margin = min(0.4, 0.45 / height)  # ~0.45 inch of the figure's height for the legend row
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize="x-small",
               frameon=False, bbox_to_anchor=(0.5, 0.0))


def mtbench_spread_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                          dpi: int = 150) -> pd.DataFrame:
    """The MT-Bench spread: every student's average (both turns) ± one standard error over questions, per
    variant and chat format, between the floor (1) and the teacher (dashed; in the Llama-3 panel also the
    teacher's Orion score, dash-dotted)."""
    table = mtbench_table(items=items, train_init=train_init, paper_reference=False)
    frame = _spread_frame(table, {f"Avg ({name})": name for name in FORMAT_NAMES.values()})
    _spread_plot(frame, xlabel="MT-Bench average (1-10)", floor=1.0, reference=FORMAT_NAMES["orion"], png=png,
                 pdf=pdf, dpi=dpi)
    return frame


def h6_spread_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                     dpi: int = 150) -> pd.DataFrame:
    """The H6 average of every model (the init x method grid) ± one standard error, per variant, the teacher
    as a dashed line."""
    table = h6_table(items=items, train_init=train_init, paper_reference=False)
    frame = _spread_frame(table, {"Average": "H6 average"})
    _spread_plot(frame, xlabel="H6 average (%)", floor=None, reference=None, png=png, pdf=pdf, dpi=dpi)
    return frame


def divergence_frame(*, items: list[Item], train_init: str) -> pd.DataFrame:
    """(variant, family, mapping, kl, who, gap, se) rows from the divergence table (same items): per variant and
    init mapping, the H6 average of the mapping alone and of each method trained from it minus the teacher's, in
    points, with the standard error of the difference (the two errors taken as independent, as in the table)."""
    table = divergence_table(items=items, train_init=train_init)
    fid = [it for it in items if it.tag == "fidelity"]
    frame = table.frame
    if len(fid) != len(frame):  # the table has one row per fidelity item, in their order
        raise KeptError(f"divergence figure: {len(fid)} fidelity inputs but {len(frame)} table rows")
    whos = {"H6 mapping": "mapping alone"} | {f"H6 {METHOD_NAMES[m]}": METHOD_NAMES[m] for m in DIVERGENCE_METHODS}
    rows = []
    for it, i in zip(fid, frame.index):
        init = it.model.removeprefix("init-")
        family = read_conversion(it.path)["family"]
        t, t_se = frame.at[i, "H6 teacher"], table.se.at[i, "H6 teacher"]
        for col, who in whos.items():
            s, s_se = frame.at[i, col], table.se.at[i, col]
            if pd.isna(s) or pd.isna(t):
                continue
            share, tokens = f"{who} regained (%)", f"Tokens to {PARITY_SHARE:g} {who}"  # a method's cost
            rows.append({"variant": it.variant, "family": family,
                         "mapping": INIT_NAMES.get(init, init), "kl": frame.at[i, "KL"], "who": who,
                         "gap": s - t, "se": math.hypot(s_se, t_se) if pd.notna(s_se) and pd.notna(t_se) else math.nan,
                         "regained": frame.at[i, share] if share in frame else math.nan,
                         "regained_se": table.se.at[i, share] if share in frame else math.nan,
                         "tokens": frame.at[i, tokens] if tokens in frame else math.nan})
    if not rows:
        raise KeptError("divergence figure: no row has both the teacher's and a student's H6")
    return pd.DataFrame(rows)


def _log_axis(set_scale, values) -> None:
    """A log axis for positive data; symlog (linear below the smallest positive value) when some value is 0 or
    less, which a log axis cannot place (a student at 0.99 of its teacher from step 0: 0 tokens); linear when no
    value is finite."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:  # nothing to place (no student reached parity from this init): a log axis would have no limits
        return
    if (v <= 0).any():
        pos = v[v > 0]
        set_scale("symlog", linthresh=float(pos.min()) if pos.size else 1.0)
    else:
        set_scale("log")


def divergence_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                      dpi: int = 150) -> pd.DataFrame:
    """The divergence study at a glance: one column of panels per init mapping. Top: the variants (source
    families) along x in order of the mapping's KL before training, and per variant the gap of the mapping alone
    and of UT / XKD-h / XKD-z at the matched budget to the teacher's H6 average, ± one standard error; the teacher
    is the dashed zero line. Below, each family's cost against that KL (log scale), per method: the share of the
    teacher's margin it regains at the matched budget (± se), and, with recovery curves, the tokens it needed to
    reach 0.99 of the teacher (families that did not within the budget are left out of that panel). Cost growing
    with divergence reads as gaps deepening to the right and shares falling / tokens rising with KL; XKD beating
    UT as its points above UT's (below, for tokens)."""
    frame = divergence_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        mappings = list(dict.fromkeys(frame.mapping))
        whos = list(dict.fromkeys(frame.who))
        n_x = frame.groupby("mapping").variant.nunique().max()
        tokens = bool(np.isfinite(frame.tokens.astype(float)).any())
        n_rows = 3 if tokens else 2
        fig, grid = plt.subplots(n_rows, len(mappings), squeeze=False,
                                 figsize=(max(3.2, 1.5 * n_x + 1.2) * len(mappings), 3.6 + 3.0 * (n_rows - 1)))
        axes = grid[:1]
        for col, mapping in enumerate(mappings):
            mine = frame[(frame.mapping == mapping) & (frame.who != "mapping alone")]
            for j, who in enumerate(whos):
                part = mine[mine.who == who].sort_values("kl")
                if part.empty:
                    continue
                ax = grid[1][col]
                ax.errorbar(part.kl, part.regained, yerr=part.regained_se.fillna(0), fmt="o-", color=f"C{j}",
                            capsize=2, lw=1, label=who)
                ax.set_xlabel(f"KL of the {mapping} mapping before training")
                ax.set_ylabel("teacher's margin regained (%)")
                if tokens:
                    done = part[np.isfinite(part.tokens.astype(float))]
                    grid[2][col].plot(done.kl, done.tokens, "o-", color=f"C{j}", lw=1, label=who)
                    grid[2][col].set_xlabel(f"KL of the {mapping} mapping before training")
                    grid[2][col].set_ylabel(f"tokens to {PARITY_SHARE:g} of the teacher")
            for r in range(1, n_rows):
                grid[r][col].set_title(f"init: {mapping}: cost against divergence", fontsize="small")
                _log_axis(grid[r][col].set_xscale, mine.kl)
            if tokens:
                _log_axis(grid[2][col].set_yscale, mine.tokens)
        width = 0.7 / max(len(whos), 1)
        for ax, mapping in zip(axes[0], mappings):
            mine = frame[frame.mapping == mapping]
            order = mine.drop_duplicates("variant").sort_values("kl", kind="stable")
            ticks = {v: k for k, v in enumerate(order.variant)}
            for j, who in enumerate(whos):
                part = mine[mine.who == who]
                xs = [ticks[v] + (j - (len(whos) - 1) / 2) * width for v in part.variant]
                ax.errorbar(xs, part.gap, yerr=part.se.fillna(0), fmt="o", color=f"C{j}", capsize=2, lw=1,
                            label=who)
            ax.axhline(0, ls="--", color="black", lw=1, label="teacher")
            ax.set_xticks(range(len(ticks)))
            ax.set_xlim(-0.5, len(ticks) - 0.5)
            ax.set_xticklabels([f"{r.variant}\n{r.family}, KL {r.kl:.2g}" for r in order.itertuples()],
                               fontsize="x-small")
            ax.set_title(f"init: {mapping}")
            ax.set_xlabel("variant (source family), by KL of the mapping")
        axes[0][0].set_ylabel("H6 average − teacher's (points)")
        legend_off_the_data(fig)
        save_figure(fig, png=png, pdf=pdf, dpi=dpi)
    return frame


def train_loss_frame(*, items: list[Item], train_init: str) -> pd.DataFrame:
    """(variant, method, step, loss) rows from each run's train_log.jsonl."""
    _require(items, "training loss figure")
    rows = []
    for it in items:
        for i, rec in enumerate(read_jsonl(it.path), start=1):
            where = f"{it.path}:{i}"
            rows.append({"variant": it.variant, "method": model_label(it.model, train_init=train_init),
                         "run": it.model, "step": int(number(rec, "step", path=where, lo=0)),
                         "loss": number(rec, "loss", path=where)})
    return pd.DataFrame(rows)


def train_loss_figure(*, items: list[Item], train_init: str, png: str | Path, pdf: str | Path,
                      dpi: int = 150) -> pd.DataFrame:
    """Training loss against step, one panel per variant and trained student (UT: cross-entropy, XKD-h: MSE,
    XKD-z: KL, so the y axes are not shared); a student trained with several seeds shows their mean and a band
    of ± one standard deviation across seeds."""
    frame = train_loss_frame(items=items, train_init=train_init)
    style, context = _theme()
    with style, context:
        grid = sns.relplot(data=frame, x="step", y="loss", row="variant", col="method", kind="line",
                           errorbar="sd", height=2.6, aspect=1.3, facet_kws={"sharey": False})
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

