"""Snakemake script (rules/data.smk): generate the toy world (world.json + text/{domain}.jsonl)."""

import logging

from kept.smk import log_to_rule
from kept.world.generator import WorldSpec
from kept.world.render import write_world

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

counts = write_world(spec=WorldSpec(**smk.params.spec), output=smk.output.world)
logging.info("done: documents per domain %s", counts)
