"""Snakemake script (rules/train.smk): cache a variant's teacher top-k log-probs for offline XKD-z."""

import logging

from kept.smk import log_to_rule
from kept.train.cache import CacheConfig, cache_teacher

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
manifest = cache_teacher(
    CacheConfig(
        teacher=smk.input.teacher,
        corpus=smk.input.corpus,
        output=smk.output.cache,
        top_k=p.top_k,
        temperature=p.temperature,
        logprob_dtype=p.logprob_dtype,
        batch_size=p.batch_size,
        chunk_size=p.chunk_size,
        teacher_dtype=p.teacher_dtype,
        device=p.device,
    )
)
logging.info("done: %d sequences, k=%d", manifest["num_sequences"], manifest["top_k"])
