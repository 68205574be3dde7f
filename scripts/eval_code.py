"""Snakemake script (rules/eval_harness.smk): the code probe (perplexity, greedy accuracy) on one grid model."""

import logging
import sys

import torch

from kept.eval.code import CodeConfig, run_code_probe

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log
torch.set_num_threads(smk.threads)

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
