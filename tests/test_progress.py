"""Progress lines of long jobs (kept.progress) and the rule-log stream that turns third-party progress bars
(tqdm's carriage-return redraws) into lines (kept.smk.RedrawLines)."""

from __future__ import annotations

import io
import logging
import re

import pytest

from kept import progress as progress_mod
from kept.progress import Progress, fmt_duration
from kept.smk import RedrawLines


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="kept.progress")

    def get() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "kept.progress"]

    return get


def test_every_update_logs_at_interval_zero(lines, monkeypatch):
    clock = iter(range(0, 1000, 2))  # each call to the clock advances 2 s
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: float(next(clock)))
    bar = Progress(4, desc="ut", unit="step", per_unit=("tok", 1000), interval=0)
    for _ in range(4):
        bar.set_postfix(loss="2.5")
        bar.update()
    bar.close()
    got = lines()
    assert len(got) == 4  # close() adds nothing after the last update's line
    assert got[0] == "ut: 1/4 step (25%) | 2 s/step, 500 tok/s | elapsed 2s, ETA 6s | loss=2.5"
    assert got[-1].startswith("ut: 4/4 step (100%)") and "ETA" not in got[-1]


def test_lines_are_rate_limited_but_first_and_last_always_logged(lines, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    bar = Progress(100, desc="cache-teacher", unit="seq", interval=30)
    for _ in range(100):
        now[0] += 1.0
        bar.update()
    got = lines()
    assert [re.match(r"cache-teacher: (\d+)/", g).group(1) for g in got] == ["1", "31", "61", "91", "100"]


def test_resumed_run_counts_rate_from_where_it_started(lines, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    bar = Progress(20, desc="xkd_z", unit="step", initial=10, interval=0)
    now[0] = 5.0
    bar.update(5)
    assert lines() == ["xkd_z: 15/20 step (75%) | 1 step/s | elapsed 5s, ETA 5s"]


def test_disabled_and_bytes(lines):
    Progress(3, desc="rank1", enabled=False, interval=0).update(3)
    assert lines() == []
    bar = Progress(3 * 2**30, desc="convert: weights", unit="B", interval=0)
    bar.update(2**30)
    assert lines()[0].startswith("convert: weights: 1.0 GiB/3.0 GiB (33%) | ")
    assert fmt_duration(3725) == "1h02m" and fmt_duration(75.4) == "1m15s"


def test_tqdm_redraws_become_rate_limited_lines():
    from tqdm import tqdm

    buf = io.StringIO()
    stream = RedrawLines(buf, interval=3600)
    bar = tqdm(total=50, desc="Running loglikelihood requests", file=stream, mininterval=0, miniters=1)
    for _ in range(50):
        bar.update()
    bar.close()
    print("Traceback line", file=stream)
    got = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    # the first redraw, then nothing for an hour, then the final state (ended by a newline) and plain text
    assert len(got) == 3, got
    assert "0/50" in got[0] and "50/50" in got[1] and got[2] == "Traceback line"

    buf = io.StringIO()
    bar = tqdm(total=5, desc="x", file=RedrawLines(buf, interval=0), mininterval=0, miniters=1)
    for _ in range(5):
        bar.update()
    bar.close()
    assert [int(re.search(r"(\d)/5", line).group(1)) for line in buf.getvalue().splitlines()] == [0, 1, 2, 3, 4, 5, 5]
