"""Snakemake script (rules/regime.smk): one model's loss on its teacher's held-out pretraining mixture."""

import logging

from kept.eval.mixture import MixtureLossConfig, mixture_loss
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
summary = mixture_loss(MixtureLossConfig(
    model=smk.input.model,
    world=smk.input.world,
    tokenizer=smk.input.tokenizer,
    output=smk.output.summary,
    mixture=dict(p.mixture),
    seq_len=p.seq_len,
    sequences=p.sequences,
    batch_size=p.batch_size,
    seed=p.seed,
    model_name=p.model_name,
    variant=p.variant,
    dtype=p.dtype,
    device=p.device,
))
logging.info("done: nll %.4f over %d sequences", summary["nll"], summary["sequences"])
