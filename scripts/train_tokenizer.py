"""Snakemake script (rules/data.smk): train the toy SentencePiece tokenizer on the world's text."""

import logging
import sys
from pathlib import Path

from kept.world.render import DOMAINS
from kept.world.tokenizer import train_tokenizer

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log

files = [Path(smk.input.world, "text", f"{d}.jsonl") for d in DOMAINS]
train_tokenizer(text_files=files, output=smk.output.model, vocab_size=smk.params.vocab_size)
logging.info("done: %s", smk.output.model)
