"""Snakemake script (rules/report.smk): build one table or figure of the report from the grid's result files."""

import logging
import sys

from kept.report import Item, ReportJob, build_report

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

p = smk.params
paths = list(smk.input)
if len(paths) != len(p.labels):
    raise RuntimeError(f"{smk.rule}: {len(paths)} input files but {len(p.labels)} labels")
job = ReportJob(
    kind=p.kind,
    name=p.name,
    items=tuple(Item(variant=v, model=m, tag=t, path=path) for (v, m, t), path in zip(p.labels, paths)),
    outputs=dict(smk.output.items()),
    train_init=p.train_init,
    paper_reference=p.get("paper_reference", False),
    dpi=p.get("dpi", 150),
)
logging.info("%s %s from %d files -> %s", job.kind, job.name, len(job.items), job.outputs)
build_report(job)
logging.info("done")
