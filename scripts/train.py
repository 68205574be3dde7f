"""Snakemake script (rules/train.smk): train one variant's student with one method (UT / XKD-h / XKD-z)."""

import logging
from pathlib import Path

from kept.smk import log_to_rule
from kept.train import TrainConfig
from kept.train.launch import launch

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

p = smk.params
cfg = TrainConfig(
    objective=p.objective,
    student=smk.input.student,
    corpus=smk.input.corpus,
    teacher=smk.input.get("teacher"),
    teacher_cache=smk.input.get("teacher_cache"),
    output=smk.output.model,
    work_dir=p.work_dir,
    **p.settings,
)
profile = p.accelerate_profile and Path(smk.scriptdir).parent / "profiles" / "accelerate" / f"{p.accelerate_profile}.yaml"
summary = launch(cfg, launcher=p.launcher, num_processes=p.num_processes, num_nodes=p.num_nodes,
                 accelerate_config=str(profile) if profile else None, log_file=smk.log[0])
logging.info("done: %s", summary)
