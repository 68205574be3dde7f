"""What every Snakemake script does first: send its logging and tracebacks to the rule's log, set its threads,
and set the Hugging Face environment of the job (scripts are the only place that sets it; kept reads none)."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class RedrawLines(io.TextIOBase):
    """A text stream over ``fh`` on which carriage-return redraws (tqdm bars of lm-eval, transformers, datasets)
    become log lines: a redrawn line is written at most once per ``interval`` seconds (default
    :data:`kept.progress.INTERVAL_S`), a line ended by ``\\n`` (a bar's last state, a traceback) always."""

    _SPLIT = re.compile(r"(\r|\n)")

    def __init__(self, fh: TextIO, *, interval: float | None = None) -> None:
        from kept.progress import INTERVAL_S

        self.fh = fh
        self.interval = INTERVAL_S if interval is None else interval
        self._line = ""
        self._last: float | None = None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        for piece in self._SPLIT.split(s):
            if piece == "\n":
                self.fh.write(self._line + "\n")
                self._line = ""
            elif piece == "\r":
                now = time.monotonic()
                if self._line.strip() and (self._last is None or now - self._last >= self.interval):
                    self.fh.write(self._line.rstrip() + "\n")
                    self._last = now
                self._line = ""
            else:
                self._line += piece
        self.fh.flush()
        return len(s)

    def flush(self) -> None:
        self.fh.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # C-level writers (faulthandler, subprocesses) write to the log file directly
        return self.fh.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fh, "encoding", None) or "utf-8"


def log_to_rule(smk: Any, *, threads: bool = True, network: bool = False, hf_cache: str | None = None) -> None:
    """Log to ``smk.log[0]`` (tracebacks and third-party progress bars too, through :class:`RedrawLines`) and,
    if ``threads``, give torch the rule's ``threads``.

    Every job runs with the Hugging Face libraries offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``):
    cluster compute nodes usually have no internet, so a job that would reach the hub must fail rather than
    hang or quietly depend on the submitting host. Only the fetch stage's local rules pass ``network=True``.
    ``hf_cache``: a cache directory written by the fetch stage (``<hf_cache>/hub`` and ``<hf_cache>/datasets``
    become ``HF_HUB_CACHE`` and ``HF_DATASETS_CACHE``). Call it before anything imports huggingface_hub,
    datasets, transformers or lm_eval (they read these variables once, at import; kept imports them lazily)."""
    fh = open(smk.log[0], "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the script
    logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stderr = RedrawLines(fh)  # one handle for both: two handles on one file would overwrite each other
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


def declared_family(config: dict[str, Any], variant: str) -> str | None:
    """The source family a variant declares: a toy variant's is its teacher recipe's (``world.teachers.<name>.family``,
    default ``orion``: the one source of truth; ``variants.<name>.source.family`` may only repeat it); a hub or local
    variant's is ``variants.<name>.source.family``, or None (detected from config.json at conversion)."""
    source = config["variants"][variant]["source"]
    if source.get("kind", "toy") == "toy":
        return (config.get("world", {}).get("teachers", {}).get(variant) or {}).get("family", "orion")
    return source.get("family")


# Norm mappings a family refuses whatever its config says (kept.convert.plan.check_mapping refuses them on every
# checkpoint of the family; tests/test_families.py holds the two in step over the published configs). The DAG checks
# a variant's mappings against these where its family is declared, so a dry run names the key instead of a
# conversion job failing after the teacher is built.
ALWAYS_REFUSED = {"olmo": {"fit": "OLMo's LayerNorms have no weights, so there are no gains to fit; with the stream "
                                  "centred, 'exact' (g = 1) is exact"}}
# RMSNorm sources: no LayerNorm to map; 'exact' (= 'paper': the gains copied) is their one mapping
RMS_FAMILIES = ("llama", "internlm3", "mistral", "ministral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text",
                "vaultgemma", "granite", "hyperclovax", "olmo2", "olmo3", "exaone", "exaone4", "helium", "seed_oss",
                "arcee", "smollm3", "glm", "glm4", "apertus", "hunyuan_v1_dense", "ernie4_5", "internlm2", "baichuan")
ALWAYS_REFUSED.update({f: {n: "its norms are RMSNorm already (the gains are copied): use 'exact' (or 'paper', the "
                              "same mapping)" for n in ("centered", "fit")} for f in RMS_FAMILIES})


def refused_norms(family: str | None, norms: list[str]) -> list[tuple[str, str]]:
    """The (norm, reason) pairs of ``norms`` that ``family`` always refuses (none for an undeclared family)."""
    refused = ALWAYS_REFUSED.get(family or "", {})
    return [(n, refused[n]) for n in norms if n in refused]
