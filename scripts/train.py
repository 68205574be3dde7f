"""Snakemake script (rules/train.smk): train one variant's student with one method (UT / XKD-h / XKD-z)."""

import logging
import sys
from pathlib import Path

import torch

from kept.train import TrainConfig
from kept.train.launch import launch

smk = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(smk.log[0], "a")  # tracebacks and the progress bar land in the rule's log
torch.set_num_threads(smk.threads)

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
summary = launch(cfg, launcher=p.launcher, num_processes=p.num_processes,
                 accelerate_config=str(profile) if profile else None, log_file=smk.log[0])
logging.info("done: %s", summary)
