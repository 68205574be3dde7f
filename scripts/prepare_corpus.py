"""Snakemake script (rules/data.smk): balance and pack the transfer corpus (world passages or MIRACL's local files)."""

import logging
from pathlib import Path

from kept.corpus import CorpusConfig, miracl_local_files, prepare_corpus
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

p = smk.params
s, miracl = p.settings, p.miracl
text = Path(smk.input.world, "text") if s["source"] == "world" else None
data_files = miracl["data_files"]
if s["source"] == "miracl" and data_files is None:  # the files the fetch stage downloaded; no hub access here
    data_files = miracl_local_files(smk.input.miracl, list(s["languages"]))
manifest = prepare_corpus(CorpusConfig(
    output=smk.output.corpus,
    tokenizer=smk.input.tokenizer,
    source=s["source"],
    languages=list(s["languages"]),
    token_budget=s["token_budget"],
    max_length=s["max_length"],
    seed=p.seed,
    passages=str(text / "passages.jsonl") if text else None,
    world_texts=[str(text / f"{d}.jsonl") for d in s["domains"] if d != "passages"] if text else [],
    coverage=s.get("coverage", 1.0),
    world=smk.input.get("world"),
    miracl_repo=miracl["repo"],
    miracl_revision=miracl["revision"],
    data_files=data_files,
    shuffle_buffer=miracl["shuffle_buffer"],
))
logging.info("done: %d sequences, tokens per language %s", manifest["num_sequences"], manifest["tokens_per_language"])
