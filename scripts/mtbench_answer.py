"""Snakemake script (rules/mt_bench.smk): MT-Bench answers of one grid model in each of its chat formats."""

import logging

from kept.eval.mtbench import AnswerConfig, generate_answer_sets
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
sets = generate_answer_sets([
    AnswerConfig(
        model=smk.input.model,
        questions=smk.input.questions,
        output=output,
        model_id=f"{p.model}-{fmt}",
        chat_format=fmt,
        max_new_tokens=p.max_new_tokens,
        temperatures=dict(p.temperatures),
        default_temperature=p.default_temperature,
        batch_size=p.batch_size,
        seed=p.seed,
        question_limit=p.question_limit,
        dtype=p.dtype,
        device=p.device,
    )
    for fmt, output in zip(p.formats, smk.output.answers, strict=True)
])
logging.info("done: %s", {fmt: len(rows) for fmt, rows in zip(p.formats, sets)})
