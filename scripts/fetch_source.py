"""Snakemake script (rules/convert.smk): download a hub teacher (weights/config/tokenizer only, never *.py)."""

import logging

from kept.smk import log_to_rule
from kept.source import fetch_source

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False, network=True)  # a fetch-stage local rule: the one place with network

record = fetch_source(repo=smk.params.repo, revision=smk.params.revision, output=smk.output.source)
logging.info("fetched %s at commit %s", record["repo"], record["commit"])
