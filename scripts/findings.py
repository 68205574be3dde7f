"""Snakemake script (rules/report.smk): docs/findings.md, the paper's claims checked against this run."""

import logging

from kept.report.findings import write_findings
from kept.report.inputs import Item
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

p = smk.params
items = [Item(variant=v, model=m, tag=t, path=path, detail=None if detail == path else detail)
         for (v, m, t), path, detail in zip(p.labels, smk.input.summaries, smk.input.details)]
rows = write_findings(items=items, md=smk.output.md, train_init=p.train_init, splits=p.splits,
                      arm_explanations=dict(p.arm_explanations))
logging.info("%d findings: %s", len(rows), {r.verdict for r in rows})
