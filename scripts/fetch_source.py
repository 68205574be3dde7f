"""Snakemake script (rules/convert.smk): download a hub teacher (weights/config/tokenizer only, never *.py)."""

import logging
import sys

from kept.source import fetch_source

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")

record = fetch_source(repo=smk.params.repo, revision=smk.params.revision, output=smk.output.source)
logging.info("fetched %s at commit %s", record["repo"], record["commit"])
