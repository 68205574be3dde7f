"""Snakemake script (rules/longctx.smk): long Wikipedia passages for the paper config, chosen by a fixed rule."""

import logging
import sys

from kept.eval.longctx import WikiDocsConfig, prepare_wiki_docs

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

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
