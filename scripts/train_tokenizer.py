"""Snakemake script (rules/data.smk): train the toy SentencePiece tokenizer on the world's text."""

import logging
from pathlib import Path

from kept.smk import log_to_rule
from kept.world.render import DOMAINS
from kept.world.tokenizer import train_tokenizer

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

files = [Path(smk.input.world, "text", f"{d}.jsonl") for d in DOMAINS]
train_tokenizer(text_files=files, output=smk.output.model, vocab_size=smk.params.vocab_size)
logging.info("done: %s", smk.output.model)
