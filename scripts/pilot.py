"""Snakemake script (rules/train.smk): the Appendix-A pilot (only the RMSNorm weights learn)."""

import logging

from kept.smk import log_to_rule
from kept.train.pilot import PilotConfig, run_pilot

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
summary = run_pilot(
    PilotConfig(
        student=smk.input.student,
        teacher=smk.input.teacher,
        corpus=smk.input.corpus,
        output=smk.output.cosine,
        work_dir=p.work_dir,
        **p.settings,
    )
)
logging.info("done: cos_mean %.3f -> %.3f", summary["cos_mean_start"], summary["cos_mean_end"])
