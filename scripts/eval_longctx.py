"""Snakemake script (rules/longctx.smk): perplexity against input length of one grid model."""

import logging

from kept.eval.longctx import LongCtxConfig, run_longctx
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
out = run_longctx(LongCtxConfig(
    model=smk.input.model,
    sources=dict(zip(p.sources, smk.input.docs)),
    output=smk.output.summary,
    lengths=list(p.lengths),
    model_name=p.model_name,
    variant=p.variant,
    max_docs=p.max_docs,
    corpus_manifest=smk.input.get("corpus"),
    dtype=p.dtype,
    device=p.device,
))
logging.info("done: %s", {n: dict(zip(s["lengths"], s["ppl"])) for n, s in out["sources"].items()})
