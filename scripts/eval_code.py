"""Snakemake script (rules/eval_harness.smk): the code probe (perplexity, greedy accuracy) on one grid model."""

import logging

from kept.eval.code import CodeConfig, run_code_probe
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
out = run_code_probe(CodeConfig(
    model=smk.input.model,
    probe=smk.input.probe,
    output=smk.output.summary,
    details=smk.output.details,
    model_name=p.model_name,
    variant=p.variant,
    limit=p.limit,
    batch_size=p.batch_size,
    dtype=p.dtype,
    device=p.device,
))
logging.info("done: ppl %.4f accuracy %.4f n %d", out["ppl"], out["accuracy"], out["n"])
