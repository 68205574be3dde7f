"""Snakemake script (rules/eval_harness.smk): the paper config's code probe, prepared from HumanEval."""

import logging

from kept.eval.code import prepare_humaneval_probe
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False, network=True)  # a fetch-stage local rule: the one place with network

n = prepare_humaneval_probe(output=smk.output.probe, dataset=smk.params.dataset, revision=smk.params.revision)
logging.info("done: %d probe items", n)
