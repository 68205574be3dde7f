"""Snakemake script (rules/mt_bench.smk): the MT-Bench summary of one model and format from its judgments."""

import logging
import sys

from kept.eval.mtbench import summarize_judgments

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

p = smk.params
s = summarize_judgments(
    judgments=smk.input.judgments,
    questions=smk.input.questions,
    output=smk.output.summary,
    model=p.model,
    variant=p.variant,
    chat_format=p.chat_format,
    judge=p.judge,
)
logging.info("done: turn1 %s turn2 %s average %s (%d failed)", s["turn1"], s["turn2"], s["average"], s["n_failed"])
