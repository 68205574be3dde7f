"""Snakemake script (rules/longctx.smk): perplexity against input length of one grid model."""

import logging
import sys

import torch

from kept.eval.longctx import LongCtxConfig, run_longctx

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log
torch.set_num_threads(smk.threads)

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
