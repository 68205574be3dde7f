"""Snakemake script (rules/data.smk): write the toy evaluation suites (lm-eval tasks, MT-Bench, longctx, code)."""

import logging

from pathlib import Path

from kept.smk import log_to_rule
from kept.world.evaldata import EvalDataConfig, write_eval_data

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

manifest = write_eval_data(EvalDataConfig(
    world=smk.input.world,
    tokenizer=smk.input.tokenizer,
    output=str(Path(smk.output.manifest).parent),  # every output lies under eval_data/, written at once
    longctx_min_tokens=smk.params.longctx_min_tokens,
    coverage=smk.params.coverage,
    corpus_domains=list(smk.params.corpus_domains),
    **smk.params.settings,
))
logging.info("done: %s", manifest)
