"""Snakemake script (rules/data.smk): pretrain one toy teacher in Orion's format (through kept.train)."""

import logging

from kept.smk import log_to_rule
from kept.world.pretrain import PretrainConfig, pretrain_teacher

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

summary = pretrain_teacher(PretrainConfig(
    world=smk.input.world,
    tokenizer=smk.input.tokenizer,
    output=smk.output.teacher,
    work_dir=smk.params.work_dir,
    train_log=smk.output.log,
    init_from=smk.input.get("init"),
    seed=smk.params.seed,
    **smk.params.settings,
))
logging.info("done: %s", {k: summary.get(k) for k in ("final_loss", "tokens", "seconds", "tokens_per_s")})
