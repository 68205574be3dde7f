"""Snakemake script (rules/mt_bench.smk): MT-Bench answers of one grid model in one chat format."""

import logging
import sys

import torch

from kept.eval.mtbench import AnswerConfig, generate_answers

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks land in the rule's log
torch.set_num_threads(smk.threads)

p = smk.params
rows = generate_answers(AnswerConfig(
    model=smk.input.model,
    questions=smk.input.questions,
    output=smk.output.answers,
    model_id=p.model_id,
    chat_format=p.chat_format,
    max_new_tokens=p.max_new_tokens,
    temperatures=dict(p.temperatures),
    default_temperature=p.default_temperature,
    batch_size=p.batch_size,
    seed=p.seed,
    question_limit=p.question_limit,
    dtype=p.dtype,
    device=p.device,
))
logging.info("done: %d answers", len(rows))
