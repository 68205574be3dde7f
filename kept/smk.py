"""What every Snakemake script does first: send its logging and tracebacks to the rule's log, set its threads,
and set the Hugging Face environment of the job (scripts are the only place that sets it; kept reads none)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any


def log_to_rule(smk: Any, *, threads: bool = True, network: bool = False, hf_cache: str | None = None) -> None:
    """Log to ``smk.log[0]`` (tracebacks too) and, if ``threads``, give torch the rule's ``threads``.

    Every job runs with the Hugging Face libraries offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``):
    cluster compute nodes usually have no internet, so a job that would reach the hub must fail rather than
    hang or quietly depend on the submitting host. Only the fetch stage's local rules pass ``network=True``.
    ``hf_cache``: a cache directory written by the fetch stage (``<hf_cache>/hub`` and ``<hf_cache>/datasets``
    become ``HF_HUB_CACHE`` and ``HF_DATASETS_CACHE``). Call it before anything imports huggingface_hub,
    datasets, transformers or lm_eval (they read these variables once, at import; kept imports them lazily)."""
    logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stderr = open(smk.log[0], "a")  # noqa: SIM115 - lives as long as the script; tracebacks land in the log
    hf_environment(network=network, hf_cache=hf_cache)
    if threads:
        import torch

        torch.set_num_threads(smk.threads)


def hf_environment(*, network: bool, hf_cache: str | None = None) -> None:
    """Set this process's (and its children's) Hugging Face environment; see :func:`log_to_rule`."""
    flag = "0" if network else "1"
    os.environ["HF_HUB_OFFLINE"] = flag
    os.environ["HF_DATASETS_OFFLINE"] = flag
    if hf_cache:
        os.environ["HF_HUB_CACHE"] = str(Path(hf_cache, "hub").resolve())
        os.environ["HF_DATASETS_CACHE"] = str(Path(hf_cache, "datasets").resolve())
