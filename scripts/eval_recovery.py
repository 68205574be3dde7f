"""Snakemake script (rules/eval_harness.smk): the recovery subset of H6 on one training snapshot of one method."""

import logging
from pathlib import Path

from kept.eval.harness import RecoveryConfig, TaskSpec, run_recovery
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, hf_cache=smk.input.get("lm_eval_cache"))  # offline; lm-eval datasets from the fetch stage

p = smk.params
h = p.harness
summaries = run_recovery(RecoveryConfig(
    snapshots=smk.input.snapshots,
    outputs={p.step: smk.output.summary},
    raw_dir=str(Path(smk.output.raw).parent),  # run_recovery writes raw_dir/step-N (this job's raw output)
    tasks=[TaskSpec.from_dict(t, where=f"eval.recovery[{i}]") for i, t in enumerate(p.tasks)],
    method=p.method,
    variant=p.variant,
    harness=dict(
        task_dir=smk.input.get("tasks"), include_defaults=h["tasks_from"] == "lm_eval", batch_size=h["batch_size"],
        max_batch_size=h["max_batch_size"], limit=h["limit"], log_samples=h["log_samples"],
        bootstrap_iters=h["bootstrap_iters"], add_bos_token=h["add_bos_token"], seed=p.seed, dtype=p.dtype,
        device=p.device,
    ),
))
logging.info("done: %s", {s["step"]: s["average"] for s in summaries})
