"""Snakemake script (rules/mt_bench.smk): judge one MT-Bench answer file (FastChat single grading), summarize.

The API key is read here from the environment variable NAMED in the config; it is never a param, never logged."""

import logging
import os

from kept.eval.judge import JudgeConfig, run_judge_job
from kept.eval.mtbench import summarize_judgments
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

p = smk.params
records = run_judge_job(
    JudgeConfig(
        answers=smk.input.answers,
        questions=smk.input.questions,
        output=smk.output.judgments,
        prompts=smk.input.get("prompts"),
        reference_answers=smk.input.get("reference"),
        parallel=p.judge.get("parallel", 4),
        question_limit=p.question_limit,
    ),
    settings=dict(p.judge, rubric=smk.input.get("rubric")),
    environ=os.environ,
)
logging.info("done: %d judgments, %d failed", len(records), sum(r["score"] == -1 for r in records))
s = summarize_judgments(
    judgments=smk.output.judgments,
    questions=smk.input.questions,
    output=smk.output.summary,
    model=p.model,
    variant=p.variant,
    chat_format=p.chat_format,
    judge=p.judge_name,
)
logging.info("summary: turn1 %s turn2 %s average %s", s["turn1"], s["turn2"], s["average"])
