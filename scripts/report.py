"""Snakemake script (rules/report.smk): build one table or figure of the report from the grid's result files."""

import logging

from kept.report import Item, ReportJob, build_report
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

p = smk.params
paths, details = list(smk.input.summaries), list(smk.input.details)
if len(paths) != len(p.labels) or (details and len(details) != len(paths)):
    raise RuntimeError(f"{smk.rule}: {len(paths)} inputs, {len(details)} details, {len(p.labels)} labels")
details = details or [None] * len(paths)
job = ReportJob(
    kind=p.kind,
    name=p.name,
    items=tuple(Item(variant=v, model=m, tag=t, path=path, detail=d)
                for (v, m, t), path, d in zip(p.labels, paths, details)),
    outputs=dict(smk.output.items()),
    train_init=p.train_init,
    paper_reference=p.get("paper_reference", False),
    dpi=p.get("dpi", 150),
)
logging.info("%s %s from %d files -> %s", job.kind, job.name, len(job.items), job.outputs)
build_report(job)
logging.info("done")
