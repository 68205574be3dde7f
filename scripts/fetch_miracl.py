"""Snakemake script (rules/fetch.smk): MIRACL's corpus files of the configured languages at the pinned revision."""

import logging

from kept.corpus import fetch_miracl
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False, network=True)  # a fetch-stage local rule: the one place with network

p = smk.params
record = fetch_miracl(output=smk.output.miracl, languages=list(p.languages), repo=p.repo, revision=p.revision)
logging.info("fetched %s at commit %s: %s", record["repo"], record["commit"],
             {lang: len(files) for lang, files in record["files"].items()})
