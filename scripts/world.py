"""Snakemake script (rules/data.smk): generate the toy world (world.json + text/{domain}.jsonl)."""

import logging
import sys

from kept.world.generator import WorldSpec
from kept.world.render import write_world

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

counts = write_world(spec=WorldSpec(**smk.params.spec), output=smk.output.world)
logging.info("done: documents per domain %s", counts)
