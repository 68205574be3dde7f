"""What every Snakemake script does first: send its logging and tracebacks to the rule's log, set its threads."""

from __future__ import annotations

import logging
import sys
from typing import Any


def log_to_rule(smk: Any, *, threads: bool = True) -> None:
    """Log to ``smk.log[0]`` (tracebacks too) and, if ``threads``, give torch the rule's ``threads``."""
    logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stderr = open(smk.log[0], "a")  # noqa: SIM115 - lives as long as the script; tracebacks land in the log
    if threads:
        import torch

        torch.set_num_threads(smk.threads)
