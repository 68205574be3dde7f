"""Snakemake script (rules/convert.smk): convert one variant's teacher into one init: a norm mapping, grafted to
fewer KV heads where the init names a graft, with the layer fit where it names one."""

import logging

from kept.convert import convert_checkpoint
from kept.convert.families import check_family
from kept.smk import declared_family, log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
# not a param (it defines nothing in the output): the declared family is checked against the detected one
check_family(smk.input.teacher, declared_family(smk.config, smk.wildcards.variant),
             key=f"variants.{smk.wildcards.variant}.source.family")
report = convert_checkpoint(
    source=smk.input.teacher,
    output=smk.output.model,
    norm=p.norm,
    mlp_target=p.mlp_target,
    dtype=p.dtype,
    max_shard_size=p.max_shard_size,
    calibration=smk.input.calibration,
    fidelity_tokens=p.fidelity_tokens,
    fit_tokens=p.fit_tokens,
    kv_heads=p.kv_heads,
    kv_init=p.kv_init,
    layer_fit=p.layer_fit,
    chat=p.chat,
    device=p.device,
)
logging.info("done: kl_mean=%s top1=%s", report["kl_mean"], report["top1_agreement"])
