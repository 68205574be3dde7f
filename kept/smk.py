"""What every Snakemake script does first: send its logging and tracebacks to the rule's log, set its threads."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
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


def log_to_rule(smk: Any, *, threads: bool = True) -> None:
    """Log to ``smk.log[0]`` (tracebacks and third-party progress bars too, through :class:`RedrawLines`) and,
    if ``threads``, give torch the rule's ``threads``."""
    fh = open(smk.log[0], "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the script
    logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stderr = RedrawLines(fh)  # one handle for both: two handles on one file would overwrite each other
    if threads:
        import torch

        torch.set_num_threads(smk.threads)
