"""Snakemake script (rules/eval_harness.smk): the paper config's code probe, prepared from HumanEval."""

import logging
import sys

from kept.eval.code import prepare_humaneval_probe

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

n = prepare_humaneval_probe(output=smk.output.probe, dataset=smk.params.dataset, revision=smk.params.revision)
logging.info("done: %d probe items", n)
