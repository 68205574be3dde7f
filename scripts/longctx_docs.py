"""Snakemake script (rules/longctx.smk): long Wikipedia passages for the paper config, chosen by a fixed rule."""

import logging

from kept.eval.longctx import WikiDocsConfig, prepare_wiki_docs
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False, network=True)  # a fetch-stage local rule: the one place with network

p = smk.params.source
n = prepare_wiki_docs(WikiDocsConfig(
    output=smk.output.docs,
    dataset=p["dataset"],
    subset=p["subset"],
    revision=p["revision"],
    lang=p["lang"],
    n_docs=p["n_docs"],
    min_chars=p["min_chars"],
    max_chars=p["max_chars"],
))
logging.info("done: %d documents", n)
