"""The fast-path table (kept.report.tables.fast_path_table): the step a stop-at-parity run ended at and its share
of the full budget, beside its H6 and MT-Bench and those of the teacher and the full-budget student."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kept.errors import KeptError
from kept.report import ReportJob, build_report
from kept.report.inputs import Item
from kept.report.tables import fast_path_table, model_label
from test_report import harness, judgments, mtbench

FAST = "xkd_z@exact-parity"


def _log(path: Path, steps: list[int], *, ceiling: int | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in steps:
        e = {"step": s, "loss": 1.0 / s, "kl": 1.0 / s, "tokens": s * 2048}
        if ceiling is not None:
            e.update(heldout_kl=0.5 / s, heldout_kl_target=0.1, stop_ceiling=ceiling)
        lines.append(json.dumps(e))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _items(root: Path, fast_seeds: dict[str, int]) -> list[Item]:
    items = []
    h6 = {"teacher": 0.7, "xkd_z": 0.5, **{m: 0.66 for m in fast_seeds}}
    for m, v in h6.items():
        p = harness(root / "base" / "eval" / m / "h6.json", variant="base", model=m, values=[v] * 6)
        items.append(Item("base", m, p, "h6", str(Path(p).with_suffix(""))))
        mt = {"teacher": 8.0, "xkd_z": 5.0}.get(m, 7.0)
        p = mtbench(root / f"{m}-orion.json", variant="base", model=m, fmt="orion", t1=mt, t2=mt)
        d = judgments(root / "j" / f"{m}-orion.jsonl", model=m, t1=[round(mt) + q % 2 for q in range(16)],
                      t2=[round(mt) + (q % 3) - 1 for q in range(16)])
        items.append(Item("base", m, p, "mtbench-orion", d))
    log = _log(root / "xkd_z.log", list(range(5, 61, 5)), ceiling=None)
    items.append(Item("base", "xkd_z", log, "train", log))
    for m, stop in fast_seeds.items():
        log = _log(root / f"{m}.log", list(range(5, stop + 1, 5)), ceiling=60)
        items.append(Item("base", m, log, "train", log))
    return items


def test_fast_path_row_has_stop_step_budget_share_and_scores(tmp_path):
    table = fast_path_table(items=_items(tmp_path, {FAST: 15}), train_init="paper")
    frame = table.frame.set_index("Model")
    fast = model_label(FAST, train_init="paper")
    assert fast == "Exact + XKD-z, stopped at parity"
    assert list(frame.index) == ["Original (teacher)", "OPM + XKD-z", fast]
    assert list(table.value_columns) == ["Stopped at step", "Tokens (share of budget)", "H6 average",
                                         "MT-Bench (Orion)"]
    assert frame.loc[fast, "Stopped at step"] == 15 and frame.loc[fast, "Tokens (share of budget)"] == 0.25
    assert frame.loc["OPM + XKD-z", "Stopped at step"] == 60
    assert frame.loc["OPM + XKD-z", "Tokens (share of budget)"] == 1.0
    assert math.isnan(frame.loc["Original (teacher)", "Stopped at step"])
    assert frame.loc[fast, "H6 average"] == pytest.approx(66.7, abs=0.1)
    assert frame.loc[fast, "MT-Bench (Orion)"] == 7.0
    se = table.se.set_index(table.frame.Model)
    assert se.loc[fast, "H6 average"] > 0 and se.loc[fast, "MT-Bench (Orion)"] > 0
    assert math.isnan(se.loc[fast, "Stopped at step"])
    # the step is never bold (not a score); the fast path beats the full-budget OPM student on both scores
    assert set(table.better) == {"H6 average", "MT-Bench (Orion)"}
    assert table.tests[("base", "H6 average")].best == table.frame.index[2]


def test_fast_path_pools_seeds_and_renders(tmp_path):
    items = _items(tmp_path, {FAST: 15, FAST + ".s7": 25})
    table = fast_path_table(items=items, train_init="paper")
    frame = table.frame.set_index("Model")
    fast = "Exact + XKD-z, stopped at parity"
    assert frame.loc[fast, "Stopped at step"] == 20
    assert table.sd.set_index(table.frame.Model).loc[fast, "Stopped at step"] == pytest.approx(7.07, abs=0.01)
    out = {ext: str(tmp_path / f"fast.{ext}") for ext in ("csv", "md", "tex")}
    build_report(ReportJob(kind="table", name="fast_path", items=tuple(items), outputs=out, train_init="paper"))
    md = Path(out["md"]).read_text()
    assert "| Exact + XKD-z, stopped at parity |" in md and "20 (sd 7)" in md


def test_fast_path_bad_log(tmp_path):
    bad = tmp_path / "empty.log"
    bad.write_text("")
    with pytest.raises(KeptError, match="empty.log"):
        fast_path_table(items=[Item("base", FAST, str(bad), "train", str(bad))], train_init="paper")
