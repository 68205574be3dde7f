"""The paper's tables and figures from the per-model result files of the grid.

:func:`build_report` is the one entry point (Snakemake scripts and ``kept report`` both call it): a
:class:`ReportJob` names the artifact, its labelled input files and its output paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kept.errors import ConfigError
from kept.report import figures, regime, tables
from kept.report.inputs import Item

TABLES = {
    "h6": tables.h6_table,
    "mtbench": tables.mtbench_table,
    "kommlu": tables.kommlu_table,
    "transfer_code": tables.code_table,
    "transfer_longctx": tables.longctx_table,
    "fidelity": tables.fidelity_table,
    "fast_path": tables.fast_path_table,
    "divergence": tables.divergence_table,
    "graft": tables.graft_table,
    "regime": regime.regime_table,
    "split": regime.split_table,
    "power": regime.power_table,
}
PAPER_TABLES = {"h6", "mtbench", "kommlu"}  # the tables the paper reports numbers for

FIGURES = {
    "recovery": figures.recovery_figure,
    "longctx": figures.longctx_figure,
    "mtbench_categories": figures.mtbench_category_figure,
    "train_loss": figures.train_loss_figure,
    "pilot": figures.pilot_figure,
    "mtbench_spread": figures.mtbench_spread_figure,
    "h6_spread": figures.h6_spread_figure,
    "divergence": figures.divergence_figure,
}
OUTPUTS = {"table": ("csv", "md", "tex"), "figure": ("png", "pdf")}


@dataclass(frozen=True)
class ReportJob:
    """One table (outputs csv/md/tex) or figure (outputs png/pdf) built from labelled input files."""

    kind: str  # "table" | "figure"
    name: str  # a key of TABLES or FIGURES
    items: tuple[Item, ...]
    outputs: dict[str, str] = field(default_factory=dict)
    train_init: str = "paper"  # the mapping the trained students start from (labels, paper comparability)
    paper_reference: bool = False  # add the paper's reported numbers beside ours (tables in PAPER_TABLES)
    dpi: int = 150  # PNG resolution


def build_report(job: ReportJob) -> None:
    """Read the job's inputs and write its outputs; bad input raises a KeptError and writes nothing."""
    if job.kind not in OUTPUTS:
        raise ConfigError(f"report kind {job.kind!r}: expected one of {sorted(OUTPUTS)}")
    known = TABLES if job.kind == "table" else FIGURES
    if job.name not in known:
        raise ConfigError(f"report {job.kind} {job.name!r}: expected one of {sorted(known)}")
    missing = [ext for ext in OUTPUTS[job.kind] if ext not in job.outputs]
    if missing:
        raise ConfigError(f"report {job.kind} {job.name!r}: no output path for {missing}")
    items = list(job.items)
    if job.kind == "table":
        kwargs = {"paper_reference": job.paper_reference} if job.name in PAPER_TABLES else {}
        table = TABLES[job.name](items=items, train_init=job.train_init, **kwargs)
        write = regime.write_text_table if isinstance(table, regime.TextTable) else tables.write_table
        write(table, csv=job.outputs["csv"], md=job.outputs["md"], tex=job.outputs["tex"])
    else:
        kwargs = {} if job.name == "pilot" else {"train_init": job.train_init}
        FIGURES[job.name](items=items, png=job.outputs["png"], pdf=job.outputs["pdf"], dpi=job.dpi, **kwargs)


__all__ = ["Item", "ReportJob", "build_report", "TABLES", "FIGURES"]
