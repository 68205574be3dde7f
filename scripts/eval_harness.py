"""Snakemake script (rules/eval_harness.smk): one lm-eval suite (H6 or KoMMLU) on one grid model."""

import logging

from kept.eval.harness import HarnessConfig, TaskSpec, run_harness
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, hf_cache=smk.input.get("lm_eval_cache"))  # offline; lm-eval datasets from the fetch stage

p = smk.params
h = p.harness
summary = run_harness(HarnessConfig(
    model=smk.input.model,
    output=smk.output.summary,
    raw_dir=smk.output.raw,
    suite=p.suite,
    tasks=[TaskSpec.from_dict(t, where=f"eval.{p.suite}[{i}]") for i, t in enumerate(p.tasks)],
    model_name=p.model_name,
    variant=p.variant,
    task_dir=smk.input.get("tasks"),
    include_defaults=h["tasks_from"] == "lm_eval",
    batch_size=h["batch_size"],
    max_batch_size=h["max_batch_size"],
    limit=h["limit"],
    log_samples=h["log_samples"],
    bootstrap_iters=h["bootstrap_iters"],
    add_bos_token=h["add_bos_token"],
    seed=p.seed,
    dtype=p.dtype,
    device=p.device,
    micro_macro=p.micro_macro,
))
logging.info("done: %s", {c["name"]: c["value"] for c in summary["columns"]})
