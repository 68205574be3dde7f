"""The bench's regime (issue 26): is the toy world in the paper's setting? Three tables from the run's files.

- **Regime** (:func:`regime_table`): per teacher, whether the transfer budget can still teach it. The control
  ``Teacher + UT`` (``ut@teacher``: the teacher itself trained with UT's settings on the transfer corpus at the
  matched budget, kept.grid.CONTROL) against the teacher: the paired toy-H6 difference on all items and on each
  side of the transfer corpus with its 95% interval, the paired difference of their loss on the teacher's held-out
  pretraining mixture (kept.eval.mixture), the teacher's final loss slope, and the budget ratio (transfer tokens /
  the teacher's pretraining tokens) beside the paper's (123M / 2.5T). The regime *holds* when Teacher + UT does not
  beat the teacher: each H6 interval (all items, in-corpus items) reaches 0 or lies below, and the mixture-loss
  interval reaches 0 or lies above (the loss does not fall).
- **Split** (:func:`split_table`): per variant and model, toy-H6, KoMMLU and the MT-Bench rubric facts on the items
  the transfer corpus states (``in``) and on those it never states (``out``), each ± its standard error.
- **Power** (:func:`power_table`): the minimum paired H6 difference the bench detects at 80% power (two-sided, 5%),
  ``(z_0.975 + z_0.8) x`` the standard error of the paired difference from its bootstrap, for XKD-z and XKD-h
  against UT from every init, on all items and on the out-of-corpus items; the target is the 2.5 points that keep
  the paper's XKD-z - UT gap on H6 (2.8) in sight.

The regime and power tables are text tables (:class:`TextTable`: intervals and verdicts as text); the split table
is a :class:`kept.report.tables.Table` (paired tests between students, bold where separable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kept.atomic import atomic_file
from kept.errors import KeptError
from kept.grid import CONTROL, parse as parse_trained, row_name
from kept.report import stats
from kept.report.inputs import Item
from kept.report.results import RunResults

PAPER_TRANSFER_TOKENS = 123e6  # the paper's XKD / UT budget (MIRACL, ~30K steps)
PAPER_PRETRAIN_TOKENS = 2.5e12  # Orion-14B's pretraining
SLOPE_WINDOW = 0.2  # the final loss slope is fit over the last fifth of the teacher's steps
Z_POWER = 0.8416212335729143  # z of 80% power
Z_ALPHA = 1.959963984540054  # z of a two-sided 5% test
MDE_TARGET = 2.5  # H6 points: below the paper's XKD-z - UT gap (2.8)
SPLITS = ("in", "out")
SPLIT_NAMES = {None: "all", "in": "in corpus", "out": "out of corpus"}


@dataclass
class TextTable:
    """A table of formatted cells (intervals, verdicts) with a note under it."""

    frame: pd.DataFrame
    note: str


def write_text_table(table: TextTable, *, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    """CSV, Markdown (with the note) and LaTeX (booktabs), each written atomically after all three rendered."""
    from kept.report.tables import latex_escape

    shown = table.frame.astype(str)
    latex = shown.map(latex_escape)
    latex.columns = [latex_escape(c) for c in latex.columns]
    texts = {
        csv: shown.to_csv(index=False),
        md: shown.to_markdown(index=False) + "\n\n" + table.note + "\n",
        tex: latex.style.hide(axis="index").to_latex(hrules=True, column_format="l" * len(shown.columns)) + "\n",
    }
    for path, text in texts.items():
        with atomic_file(path, "w", encoding="utf-8") as fh:
            fh.write(text)


# ---- measurements -----------------------------------------------------------------------------------------------

def loss_slope(lines: list[dict[str, Any]], *, where: str, window: float = SLOPE_WINDOW) -> dict[str, float]:
    """The least-squares slope of the logged training loss against step over the last ``window`` of the steps, per
    100 steps, with its 95% t-interval; the mean loss there and the number of logged points."""
    from scipy import stats as sps

    steps = np.array([float(e["step"]) for e in lines if "loss" in e])
    loss = np.array([float(e["loss"]) for e in lines if "loss" in e])
    if len(steps) < 3:
        raise KeptError(f"{where}: fewer than 3 logged losses: no slope")
    keep = steps >= steps.max() - window * steps.max()
    x, y = steps[keep], loss[keep]
    if len(x) < 3:
        x, y = steps[-3:], loss[-3:]
    fit = sps.linregress(x, y)
    half = sps.t.ppf(0.975, len(x) - 2) * fit.stderr
    return {"slope": 100 * fit.slope, "lo": 100 * (fit.slope - half), "hi": 100 * (fit.slope + half),
            "loss": float(y.mean()), "points": float(len(x)), "from_step": float(x.min()), "to_step": float(x.max())}


def last_tokens(lines: list[dict[str, Any]], *, where: str) -> float:
    """Tokens a run had trained on at its last logged step."""
    if "tokens" not in lines[-1]:
        raise KeptError(f"{where}: the last train-log line has no 'tokens'")
    return float(lines[-1]["tokens"])


def paired_difference(a: stats.Sample | None, b: stats.Sample | None) -> tuple[float, float, float]:
    """a - b with its 95% paired-bootstrap interval ((nan, nan, nan) if either is missing)."""
    if a is None or b is None:
        return math.nan, math.nan, math.nan
    reps = stats.joint_replicates([a, b])
    lo, hi = stats.interval(reps[:, 0] - reps[:, 1])
    return a.value() - b.value(), lo, hi


@dataclass
class RegimeCheck:
    """One teacher's regime: Teacher + UT against the teacher."""

    variant: str
    pretrain_tokens: float
    transfer_tokens: float
    slope: dict[str, float] | None
    h6: dict[str | None, tuple[float, float, float]]  # split (None = all items) -> (diff, lo, hi), H6 points
    mixture: tuple[float, float, float]  # control - teacher, nats per token

    @property
    def ratio(self) -> float:
        return self.transfer_tokens / self.pretrain_tokens if self.pretrain_tokens else math.nan

    @property
    def failures(self) -> list[str]:
        """What the control beats the teacher on (an empty list: the regime holds)."""
        out = [f"Teacher + UT beats the teacher on toy-H6 ({SPLIT_NAMES[s]} items)"
               for s in (None, "in") if math.isfinite(self.h6.get(s, (math.nan,) * 3)[1]) and self.h6[s][1] > 0]
        if math.isfinite(self.mixture[2]) and self.mixture[2] < 0:
            out.append("its held-out pretraining-mixture loss falls")
        return out

    @property
    def measured(self) -> bool:
        """Whether either criterion has data (the H6 difference on all items, or the mixture loss)."""
        return any(math.isfinite(x[1]) for x in (self.h6.get(None, (math.nan,) * 3), self.mixture))

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "no data"
        return "holds" if not self.failures else "fails: " + "; ".join(self.failures)


def regime_checks(run: RunResults) -> list[RegimeCheck]:
    """Every variant of the run with a Teacher + UT control evaluated on H6 beside its teacher."""
    out = []
    for v in run.variants(run.h6):
        if (v, CONTROL) not in run.h6 or (v, "teacher") not in run.h6:
            continue
        chain = run.pretrain.get(v, {})
        pretrain = sum(last_tokens(lines, where=f"pretraining log of {t}") for t, lines in chain.items())
        control_logs = run.train_logs.get((v, CONTROL), [])
        transfer = float(np.mean([last_tokens(lines, where=f"train log of {v}/{CONTROL}") for lines in control_logs])) \
            if control_logs else math.nan
        slope = loss_slope(chain[v], where=f"pretraining log of {v}") if v in chain else None
        h6 = {s: paired_difference(run.h6_avg(v, CONTROL, s), run.h6_avg(v, "teacher", s)) for s in (None,) + SPLITS}
        mixture = paired_difference(run.mixture_loss(v, CONTROL), run.mixture_loss(v, "teacher"))
        out.append(RegimeCheck(v, pretrain if chain else math.nan, transfer, slope, h6, mixture))
    return out


def _ci(point: float, lo: float, hi: float, spec: str) -> str:
    if not math.isfinite(point):
        return "–"
    return f"{format(point, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


REGIME_NOTE = (
    "Teacher + UT (ut@teacher): the teacher itself, unconverted, trained with UT's settings on the transfer corpus at "
    "the matched budget. Δ = Teacher + UT minus the teacher, with its 95% paired-bootstrap interval ({iters} "
    "resamples of the items, or of the held-out sequences for the loss). Final loss slope: least-squares slope of the "
    "teacher's logged training loss over the last {window:.0%} of its steps, per 100 steps, with its 95% t-interval. "
    "Budget ratio: the tokens UT trains on / the tokens of the teacher's pretraining (a chat or long-context teacher "
    "counts its base's too); the paper's: 123M / 2.5T = {paper:.1e}. The regime holds when Teacher + UT does not beat "
    "the teacher: the toy-H6 intervals (all items; in-corpus items) reach 0 or lie below, and the loss interval "
    "reaches 0 or lies above."
)


def regime_table(*, items: list[Item], train_init: str) -> TextTable:
    """The regime table (module docstring); ``items``: per variant the teacher's and the control's ``h6`` and
    ``mixture`` files, the control's ``train`` log and the ``pretrain-<teacher>`` logs of the teacher's chain."""
    checks = regime_checks(RunResults(items))
    if not checks:
        raise KeptError("regime table: no variant has both its teacher and Teacher + UT evaluated on H6")
    rows = []
    for c in checks:
        s = c.slope
        rows.append({
            "Variant": c.variant,
            "Teacher pretraining tokens": f"{c.pretrain_tokens:,.0f}" if math.isfinite(c.pretrain_tokens) else "–",
            "Transfer tokens": f"{c.transfer_tokens:,.0f}" if math.isfinite(c.transfer_tokens) else "–",
            "Budget ratio": f"{c.ratio:.3g}" if math.isfinite(c.ratio) else "–",
            "Final loss slope /100 steps": (f"{s['slope']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}] at loss "
                                            f"{s['loss']:.3f}") if s else "–",
            "Δ toy-H6 (all)": _ci(*c.h6[None], "+.2f"),
            "Δ toy-H6 (in corpus)": _ci(*c.h6["in"], "+.2f"),
            "Δ toy-H6 (out of corpus)": _ci(*c.h6["out"], "+.2f"),
            "Δ held-out mixture loss (nats/token)": _ci(*c.mixture, "+.4f"),
            "Regime": c.verdict,
        })
    note = REGIME_NOTE.format(iters=stats.BOOTSTRAP_ITERS, window=SLOPE_WINDOW,
                              paper=PAPER_TRANSFER_TOKENS / PAPER_PRETRAIN_TOKENS)
    return TextTable(pd.DataFrame(rows), note)


# ---- the split table ------------------------------------------------------------------------------------------

SPLIT_COLUMNS = (("h6", "H6"), ("kommlu", "KoMMLU"), ("mtfacts", "MT facts"))


def split_table(*, items: list[Item], train_init: str) -> Any:
    """Per variant and model: toy-H6 (tag ``h6``), KoMMLU (``kommlu``) and the MT-Bench rubric facts met
    (``mtfacts-<format>``) on the in-corpus and the out-of-corpus items, in percent, ± standard errors over the
    items (seeds pooled unit by unit)."""
    from kept.report.tables import Cell, FORMAT_NAMES, build_table

    run = RunResults(items)
    fmts = sorted({it.tag[len("mtfacts-"):] for it in items if it.tag.startswith("mtfacts-")})
    keys = list(dict.fromkeys((it.variant, row_name(it.model)) for it in items))
    if not keys:
        raise KeptError("split table: no input files in the grid")
    columns = [f"{name} ({SPLIT_NAMES[s]})" for name in ["H6", "KoMMLU"] + [
        f"MT facts, {FORMAT_NAMES.get(f, f)}" for f in fmts] for s in SPLITS]
    entries = []
    for v, m in keys:
        found: dict[str, stats.Sample | None] = {}
        for split in SPLITS:
            side = SPLIT_NAMES[split]
            found[f"H6 ({side})"] = run.h6_avg(v, m, split) if (v, m) in run.h6_files else None
            found[f"KoMMLU ({side})"] = run.split_avg("kommlu", v, m, split)
            for fmt in fmts:
                found[f"MT facts, {FORMAT_NAMES.get(fmt, fmt)} ({side})"] = run.mt_facts_share(v, m, fmt, split)
        entries.append((v, m, {c: Cell(x.value(), sample=x) for c, x in found.items() if x is not None}))
    used = [c for c in columns if any(c in cells for _, _, cells in entries)]
    return build_table(entries, columns=used, better={c: "max" for c in used}, formats={c: ".1f" for c in used},
                       train_init=train_init)


# ---- power ------------------------------------------------------------------------------------------------------

POWER_NOTE = (
    "Minimum detectable difference (MDE): the smallest paired H6 difference a two-sided 5% test over the same items "
    "detects with 80% power, (z_0.975 + z_0.8) x SE = {k:.2f} x SE, where SE is the standard error of the paired "
    "difference (its {iters}-resample paired bootstrap over the items). Target: <= {target} H6 points, under the "
    "paper's XKD-z - UT gap (2.8)."
)


def mde(se: float) -> float:
    """The minimum difference detectable at 80% power by a two-sided 5% test whose estimate has error ``se``."""
    return (Z_ALPHA + Z_POWER) * se


def power_table(*, items: list[Item], train_init: str) -> TextTable:
    """Per variant, init and XKD method against UT: items, the paired H6 difference, its SE and the MDE, on all
    items and on the out-of-corpus ones (``items``: the H6 table's)."""
    from kept.report.tables import model_label

    run = RunResults(items)
    rows = []
    for v in run.variants(run.h6):
        students = [parse_trained(m) for (vv, m) in run.h6 if vv == v]
        inits = list(dict.fromkeys(t.init for t in students if t and not t.corpus and not t.stop and not t.control))
        for init in inits:
            suffix = f"@{init}" if init else ""
            for method in ("xkd_z", "xkd_h"):
                a, b = method + suffix, "ut" + suffix
                for split in (None, "out"):
                    sa, sb = run.h6_avg(v, a, split), run.h6_avg(v, b, split)
                    if sa is None or sb is None:
                        continue
                    reps = stats.joint_replicates([sa, sb])
                    se = float(np.std(reps[:, 0] - reps[:, 1], ddof=1))
                    rows.append({
                        "Variant": v,
                        "Comparison": f"{model_label(a, train_init=train_init)} - {model_label(b, train_init=train_init)}",
                        "Items": SPLIT_NAMES[split], "n": sa.n,
                        "Difference": f"{sa.value() - sb.value():+.2f}",
                        "SE": f"{se:.2f}", "MDE (80% power)": f"{mde(se):.2f}",
                        f"MDE <= {MDE_TARGET}": "yes" if mde(se) <= MDE_TARGET else "no",
                    })
    if not rows:
        raise KeptError("power table: no variant has XKD and UT students evaluated on H6 from the same init")
    return TextTable(pd.DataFrame(rows), POWER_NOTE.format(k=Z_ALPHA + Z_POWER, iters=stats.BOOTSTRAP_ITERS,
                                                          target=MDE_TARGET))


__all__ = ["RegimeCheck", "TextTable", "mde", "power_table", "regime_checks", "regime_table", "split_table",
           "write_text_table"]
