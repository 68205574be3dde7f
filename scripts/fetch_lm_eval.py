"""Snakemake script (rules/fetch.smk): lm-eval's datasets of every configured task, into the workflow's cache."""

import logging

from kept.eval.harness import TaskSpec, precache_tasks
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
# a fetch-stage local rule: network on, the Hugging Face caches pointed into this rule's output
log_to_rule(smk, threads=False, network=True, hf_cache=smk.output.cache)

manifest = precache_tasks(
    tasks=[TaskSpec.from_dict(t, where=f"fetch_lm_eval[{i}]") for i, t in enumerate(smk.params.tasks)],
    output=smk.output.cache,
)
logging.info("cached %d lm-eval tasks: %s", len(manifest["tasks"]), sorted(manifest["tasks"]))
