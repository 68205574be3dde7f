"""Progress lines for long jobs: counts, throughput and ETA in the job's log, at most every ``interval`` seconds.

Every long job (teacher pretraining, training, the teacher cache, conversion with its fidelity report, the
evaluations) reports through :class:`Progress`, which writes plain ``logging`` lines, so they land in the
Snakemake rule log (:func:`kept.smk.log_to_rule`) or on the console of a ``kept`` command::

    xkd_z: 120/500 step (24%) | 1.93 step/s, 15.8k tok/s | elapsed 1m02s, ETA 3m17s | loss=2.31

The first update and the last one are always logged; in between, one line per ``interval`` seconds
(:data:`INTERVAL_S` unless given). The interface is a subset of tqdm's (``update``, ``set_postfix``, ``close``)
so a tqdm bar can be swapped for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

INTERVAL_S = 30.0  # default seconds between two progress lines (tests set 0: a line per update)

_log = logging.getLogger("kept.progress")


def fmt_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``4000`` -> ``"1h06m"``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_amount(x: float, unit: str) -> str:
    """``1.5e6, "tok"`` -> ``"1.50M tok"``; bytes (``unit="B"``) in binary units (``"1.4 GiB"``)."""
    if unit == "B":
        for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
            if abs(x) < 1024 or prefix == "Ti":
                return f"{x:.0f} B" if not prefix else f"{x:.1f} {prefix}B"
            x /= 1024
    for value, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= value:
            return f"{x / value:.3g}{suffix} {unit}"
    return f"{x:.3g} {unit}"


class Progress:
    """Counts ``update(n)`` calls towards ``total`` and logs progress lines (see the module docstring).

    ``unit``: what one count is (``"step"``, ``"seq"``, ``"B"``, ...). ``per_unit``: an extra throughput, e.g.
    ``("tok", tokens_per_step)`` adds ``tok/s``. ``initial``: counts already done (a resumed run); rates and the
    ETA use only the counts done since this object was made. ``enabled=False`` logs nothing (non-main ranks).
    """

    def __init__(self, total: int | float | None, *, desc: str, unit: str = "it", initial: int | float = 0,
                 per_unit: tuple[str, float] | None = None, interval: float | None = None,
                 logger: logging.Logger | None = None, enabled: bool = True) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.per_unit = per_unit
        self.interval = INTERVAL_S if interval is None else interval
        self.logger = logger or _log
        self.enabled = enabled
        self.postfix: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self._last: float | None = None  # time of the last line
        self._last_n: int | float | None = None
        self._closed = False
        self._lock = threading.Lock()  # judges update from a thread pool

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, refresh: bool = False, **fields: Any) -> None:
        """Fields appended to the next line (``loss=2.31``)."""
        self.postfix = fields

    def update(self, n: int | float = 1) -> None:
        """``n`` more counts done; log a line if the interval has passed (or on the first and the last count)."""
        with self._lock:
            self.n += n
            if not self.enabled:
                return
            now = time.monotonic()
            done = self.total is not None and self.n >= self.total
            if self._last is None or done or now - self._last >= self.interval:
                self._emit(now)

    def line(self, now: float | None = None) -> str:
        """The progress line for the current count."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        count = self._count(self.n)
        if self.total:
            count = f"{count}/{self._count(self.total)}"
        if self.unit != "B":
            count += f" {self.unit}"
        if self.total:
            count += f" ({100.0 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {count}"]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            rates = [self._rate(rate, self.unit)]
            if self.per_unit:
                rates.append(self._rate(rate * self.per_unit[1], self.per_unit[0]))
            parts.append(", ".join(rates))
        times = f"elapsed {fmt_duration(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            times += f", ETA {fmt_duration((self.total - self.n) / rate)}"
        parts.append(times)
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return " | ".join(parts)

    def close(self) -> None:
        """Log the final line (unless the last update already did)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._last_n != self.n:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        self.logger.info("%s", self.line(now))
        self._last, self._last_n = now, self.n

    def _count(self, x: int | float) -> str:
        if self.unit == "B":
            return fmt_amount(x, "B")
        return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"

    @staticmethod
    def _rate(rate: float, unit: str) -> str:
        if unit == "B":
            return f"{fmt_amount(rate, 'B')}/s"
        if rate < 1:
            return f"{1 / rate:.3g} s/{unit}"
        return f"{fmt_amount(rate, unit)}/s"
