"""Tables and figures from small synthetic result files in the documented formats (docs/architecture.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from kept.cli import main as kept_main
from kept.errors import KeptError
from kept.report import ReportJob, build_report, paper
from kept.report.figures import (
    longctx_figure, mtbench_category_figure, mtbench_spread_figure, pilot_figure, recovery_figure, train_loss_figure,
)
from kept.report.inputs import Item
from kept.report.tables import (
    best_mask, code_table, fidelity_table, h6_table, kommlu_table, longctx_table, mtbench_table,
    render_latex, render_markdown, write_table,
)

H6 = [("ARC", "toy_arc"), ("HellaSwag", "toy_hellaswag"), ("MMLU", "toy_mmlu"),
      ("TruthfulQA", "toy_truthfulqa_mc2"), ("Winogrande", "toy_winogrande"), ("GSM8K", "toy_gsm8k")]
MODELS = ["teacher", "init-paper", "init-centered", "init-exact", "init-fit", "ut", "xkd_h", "xkd_z"]


def _dump(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def harness(path: Path, *, variant: str, model: str, values: list[float], names=H6, suite="h6", n: int = 60,
            stderr: float | None = 0.01) -> str:
    """A harness summary and, beside it (``<stem>/``), lm-eval's raw directory with per-sample logs: item i of a
    column with value v is correct iff i < round(v * n), so a higher value is correct on a superset."""
    raw = path.parent / path.stem
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps({"results": {}, "group_subtasks": {}}))
    cols = []
    for (name, task), v in zip(names, values):
        k = round(v * n)
        (raw / f"samples_{task}.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "filter": "none", "acc": float(i < k)}) + "\n" for i in range(n)))
        cols.append({"name": name, "task": task, "shots": 0, "metric": "acc,none", "value": k / n,
                     "stderr": stderr, "chance": 0.25, "n": n})
    return _dump(path, {"model": model, "variant": variant, "suite": suite, "limit": None, "columns": cols,
                        "average": sum(c["value"] for c in cols) / len(cols), "lm_eval_version": "0.4.13"})


def h6_items(root: Path, values: dict[tuple[str, str], list[float]], **kwargs) -> list[Item]:
    items = []
    for (v, m), x in values.items():
        path = harness(root / v / "eval" / m / "h6.json", variant=v, model=m, values=x, **kwargs)
        items.append(Item(variant=v, model=m, path=path, detail=str(Path(path).with_suffix(""))))
    return items


def mtbench(path: Path, *, variant: str, model: str, fmt: str, t1: float, t2: float) -> str:
    cats = {c: {"turn1": t1, "turn2": t2, "average": (t1 + t2) / 2}
            for c in ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]}
    return _dump(path, {"model": model, "variant": variant, "format": fmt, "judge": "toy", "turn1": t1,
                        "turn2": t2, "average": (t1 + t2) / 2, "by_category": cats, "n_judgments": 160,
                        "n_failed": 0})


def judgments(path: Path, *, model: str, t1: list[int], t2: list[int]) -> str:
    """A FastChat judgment file: question 81 + i gets t1[i] on turn 1 and t2[i] on turn 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": 81 + i, "model": model, "judge": ["toy", "single-v1"], "turn": turn, "score": s}
            for turn, scores in ((1, t1), (2, t2)) for i, s in enumerate(scores)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def longctx(path: Path, *, variant: str, model: str, scale: float, tml: int = 64, docs: int = 0) -> str:
    """A long-context summary; ``docs`` > 0 adds per-document NLL (documents whose perplexity spreads by
    +-10% around the curve)."""
    lengths = [32, 64, 128, 256]
    sources = {}
    for name, factor in (("en", 1), ("ko", 2)):
        ppl = [factor * scale * (1 + n / 1000) for n in lengths]
        sources[name] = {"lengths": lengths, "ppl": ppl, "n_docs": max(docs, 3)}
        if docs:
            sources[name]["doc_ids"] = [f"{name}-{d}" for d in range(docs)]
            sources[name]["doc_nll"] = [[(n - 1) * math.log(p * (0.9 + 0.2 * d / max(docs - 1, 1)))
                                         for n, p in zip(lengths, ppl)] for d in range(docs)]
    return _dump(path, {"model": model, "variant": variant, "train_max_length": tml, "sources": sources})


def fidelity(model_dir: Path, *, norm: str, kl: float, top1: float) -> str:
    _dump(model_dir / "fidelity.json", {
        "norm": norm, "n_tokens": 512, "kl_mean": kl, "kl_max": 3 * kl, "top1_agreement": top1,
        "max_abs_dlogit": 10 * kl, "layer_rel_err": [kl, 2 * kl], "final_norm_logit_offset_norm": 0.1,
        "mapping": [], "dropped": [], "kl_per_sequence": [kl * (0.5 + i / 7) for i in range(8)],
        "top1_per_sequence": [min(1.0, top1 * (0.95 + i / 70)) for i in range(8)]})
    return str(model_dir)


# ---- H6 (Table 3) -----------------------------------------------------------------------------------------


@pytest.fixture
def h6_grid(tmp_path):
    # teacher best everywhere; among students xkd_z wins ARC, ut wins GSM8K, xkd_h and xkd_z tie on MMLU.
    vals = {
        "teacher": [0.90, 0.90, 0.90, 0.90, 0.90, 0.90],
        "init-paper": [0.30, 0.30, 0.30, 0.30, 0.30, 0.30],
        "init-centered": [0.31, 0.30, 0.30, 0.30, 0.30, 0.30],
        "init-exact": [0.80, 0.81, 0.80, 0.80, 0.80, 0.10],
        "init-fit": [0.50, 0.50, 0.50, 0.50, 0.50, 0.50],
        "ut": [0.60, 0.60, 0.70, 0.60, 0.60, 0.85],
        "xkd_h": [0.70, 0.70, 0.83, 0.70, 0.70, 0.60],
        "xkd_z": [0.85, 0.80, 0.83, 0.80, 0.80, 0.70],
    }
    data = {("base", m): v for m, v in vals.items()} | {("chat", m): [x * 0.9 for x in v] for m, v in vals.items()}
    return h6_items(tmp_path, data)


def test_h6_table_values_errors_and_paired_bold(h6_grid, tmp_path):
    table = h6_table(items=h6_grid, train_init="paper", paper_reference=False)
    frame = table.frame
    assert list(frame.columns) == ["Variant", "Model", "ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande",
                                   "GSM8K", "Average"]
    assert list(frame.Model[:8]) == ["Original (teacher)", "OPM", "Centered", "Exact", "Fit", "OPM + UT",
                                     "OPM + XKD-h", "OPM + XKD-z"]
    row = frame[(frame.Variant == "base") & (frame.Model == "OPM + XKD-z")].iloc[0]
    assert row.ARC == pytest.approx(85.0) and row.Average == pytest.approx(100 * (51 + 48 + 50 + 48 + 48 + 42) / 360)
    # lm-eval's stderr where the summary has one; the average propagates the six columns' errors
    assert table.se.ARC.iloc[0] == pytest.approx(1.0)
    assert table.se.Average.iloc[0] == pytest.approx(math.sqrt(6) / 6)
    mask = best_mask(table)
    base = frame.Variant == "base"
    # bold only where a paired test separates the best student from the runner-up, never the teacher
    assert list(frame.Model[base & mask.GSM8K]) == ["OPM + UT"]  # 51 vs 42 correct on nested items: p = 2/512
    assert not mask.ARC.any()  # 51 vs 48 (Exact): three discordant items, p = 0.25
    assert not mask.MMLU.any() and not mask.HellaSwag.any()  # a tie; one item apart
    assert not mask.loc[frame.Model == "Original (teacher)"].any().any()
    test = table.tests[("base", "ARC")]
    assert frame.Model[test.best] == "OPM + XKD-z" and frame.Model[test.runner] == "Exact"
    assert test.p == pytest.approx(0.25) and not test.separable
    assert table.tests[("base", "GSM8K")].p == pytest.approx(2 / 512)
    # one student per variant: nothing to test, nothing bold
    few = [it for it in h6_grid if it.model in ("teacher", "xkd_z")]
    assert not best_mask(h6_table(items=few, train_init="paper", paper_reference=False)).any().any()

    md = render_markdown(table)
    xkd_line = next(line for line in md.splitlines() if "base" in line and "OPM + UT " in line)
    assert "**85.0 ± 1.0**" in xkd_line and "85.0 ± 1.0" in md
    assert md.count("**") == 2 * int(mask.sum().sum())
    test_line = next(line for line in md.splitlines() if "base" in line and "paired test" in line)
    assert "not separable (p = 0.25)" in test_line and "p = 0.00391" in test_line
    tex = render_latex(table)
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in tex
    assert "\\textbf{85.0 $\\pm$ 1.0}" in tex and "paired test" in tex
    assert tex.count("\\midrule") == 2  # header rule + one between the two variants

    out = {ext: tmp_path / "out" / f"h6.{ext}" for ext in ("csv", "md", "tex")}
    write_table(table, **out)
    back = pd.read_csv(out["csv"])
    assert back.ARC.tolist() == pytest.approx(frame.ARC.tolist(), rel=1e-5)
    assert back["ARC se"].tolist() == pytest.approx(table.se.ARC.tolist()) and "ARC seed sd" in back


def test_h6_errors_from_items_and_seeds(tmp_path):
    """Without lm-eval's stderr the standard error is a bootstrap over the per-sample logs (close to the
    binomial sqrt(p(1-p)/(n-1))); seeds of one student pool into one row with their sd; bold needs the test."""
    vals = {("base", "teacher"): [0.9] * 6, ("base", "ut"): [0.5] * 6, ("base", "xkd_z"): [0.7] * 6,
            ("base", "xkd_z.s7"): [0.8] * 6}
    items = h6_items(tmp_path, vals, stderr=None)
    table = h6_table(items=items, train_init="paper", paper_reference=False)
    frame = table.frame.set_index("Model")
    assert list(frame.index) == ["Original (teacher)", "OPM + UT", "OPM + XKD-z"] and table.seeds == [1, 1, 2]
    assert frame.loc["OPM + XKD-z", "ARC"] == pytest.approx(75.0)
    assert table.sd.ARC.iloc[2] == pytest.approx(math.sqrt(50.0))  # sd of 70 and 80
    binomial = 100 * math.sqrt(0.5 * 0.5 / 59)
    assert table.se.ARC.iloc[1] == pytest.approx(binomial, rel=0.08)
    assert table.se.Average.iloc[1] == pytest.approx(binomial / math.sqrt(6), rel=0.1)  # six independent tasks
    assert best_mask(table).ARC.iloc[2]  # 0.75 (seed mean per item) vs 0.5: separable
    md = render_markdown(table)
    assert md.splitlines()[0].split("|")[3].strip() == "Seeds" and "(sd 7.1)" in md


def test_h6_table_paper_reference(h6_grid):
    table = h6_table(items=h6_grid, train_init="paper", paper_reference=True)
    frame = table.frame.set_index(["Variant", "Model"])
    assert list(table.frame.columns[2:6]) == ["ARC", "ARC (paper)", "HellaSwag", "HellaSwag (paper)"]
    assert frame.loc[("base", "OPM + XKD-z"), "ARC (paper)"] == paper.TABLE3["base"]["xkd_z"][0]
    assert frame.loc[("chat", "OPM"), "Average (paper)"] == paper.TABLE3["chat"]["opm"][6]
    assert frame.loc[("base", "Original (teacher)"), "GSM8K (paper)"] == paper.TABLE3["base"]["original"][5]
    assert math.isnan(frame.loc[("base", "Exact"), "ARC (paper)"])  # the paper has no such row
    assert "–" in render_markdown(table)
    # students trained from another mapping are not the paper's OPM + X rows
    other = h6_table(items=h6_grid, train_init="exact", paper_reference=True).frame.set_index(["Variant", "Model"])
    assert math.isnan(other.loc[("base", "Exact + XKD-z"), "ARC (paper)"])
    assert other.loc[("base", "OPM"), "ARC (paper)"] == paper.TABLE3["base"]["opm"][0]


def test_paper_numbers_are_the_published_averages():
    # the paper's averages are the means of its six columns (to rounding): catches a mistyped number
    for variant, rows in paper.TABLE3.items():
        for method, row in rows.items():
            assert sum(row[:6]) / 6 == pytest.approx(row[6], abs=0.011), (variant, method)
    for variant, rows in paper.TABLE4.items():
        for method, (t1, t2, avg) in rows.items():
            assert (t1 + t2) / 2 == pytest.approx(avg, abs=0.0011), (variant, method)


def test_h6_table_bad_inputs(h6_grid, tmp_path):
    missing = Item(variant="base", model="ut", path=str(tmp_path / "nope" / "h6.json"))
    with pytest.raises(KeptError, match="nope/h6.json"):
        h6_table(items=[*h6_grid, missing], train_init="paper", paper_reference=False)
    wrong = Item(variant="chat", model="ut", path=h6_grid[5].path)  # the file says base/ut
    with pytest.raises(KeptError, match="'variant' is 'base'"):
        h6_table(items=[wrong], train_init="paper", paper_reference=False)
    obj = json.loads(Path(h6_grid[0].path).read_text())
    del obj["columns"][2]["value"]
    bad = Item(variant="base", model="teacher", path=_dump(tmp_path / "bad.json", obj))
    with pytest.raises(KeptError, match=r"columns\[2\].*'value'"):
        h6_table(items=[bad], train_init="paper", paper_reference=False)
    obj = json.loads(Path(h6_grid[0].path).read_text())
    obj["columns"] = obj["columns"][:5]
    short = Item(variant="base", model="teacher", path=_dump(tmp_path / "short.json", obj))
    with pytest.raises(KeptError, match="differ"):
        h6_table(items=[h6_grid[1], short], train_init="paper", paper_reference=False)
    with pytest.raises(KeptError, match="no input files"):
        h6_table(items=[], train_init="paper", paper_reference=False)
    # a failing job leaves no output behind
    outputs = {ext: str(tmp_path / "t" / f"h6.{ext}") for ext in ("csv", "md", "tex")}
    with pytest.raises(KeptError):
        build_report(ReportJob(kind="table", name="h6", items=(*h6_grid, missing), outputs=outputs))
    assert not any(Path(p).exists() for p in outputs.values())


# ---- MT-Bench (Table 4), KoMMLU, transfer, fidelity --------------------------------------------------------


def test_mtbench_table_both_formats(tmp_path):
    items = [Item("chat", "teacher", mtbench(tmp_path / "t.json", variant="chat", model="teacher", fmt="orion",
                                             t1=8.0, t2=7.0), "orion")]
    for i, m in enumerate(["init-paper", "ut", "xkd_z"]):
        for fmt, shift in (("orion", 0.5), ("llama3", 0.0)):
            t1, t2 = 2 + 2 * i + shift, 1 + 2 * i
            path = mtbench(tmp_path / f"{m}-{fmt}.json", variant="chat", model=m, fmt=fmt, t1=t1, t2=t2)
            # 16 questions around the summary's means (the same per question spread for every model)
            detail = judgments(tmp_path / "j" / f"{m}-{fmt}.jsonl", model=m,
                               t1=[round(t1) + (q % 3) - 1 for q in range(16)], t2=[round(t2) + q % 2 for q in range(16)])
            items.append(Item("chat", m, path, fmt, detail))
    table = mtbench_table(items=items, train_init="paper", paper_reference=True)
    frame = table.frame.set_index("Model")
    assert list(table.frame.columns[2:8]) == ["Turn 1 (Orion)", "Turn 2 (Orion)", "Avg (Orion)",
                                              "Turn 1 (Llama-3)", "Turn 2 (Llama-3)", "Avg (Llama-3)"]
    assert math.isnan(frame.loc["Original (teacher)", "Avg (Llama-3)"])  # teachers answer in Orion only
    assert frame.loc["OPM + XKD-z", "Turn 1 (Orion)"] == 6.5
    assert frame.loc["OPM + XKD-z", "Avg (paper)"] == paper.TABLE4["chat"]["xkd_z"][2]
    se = table.se.set_index(table.frame.Model)
    assert se.loc["OPM + XKD-z", "Turn 1 (Orion)"] == pytest.approx(math.sqrt(2 / 3 * 16 / 15 / 16), rel=0.1)
    assert math.isnan(se.loc["OPM + XKD-z", "Avg (paper)"])  # the paper's numbers carry no interval
    mask = best_mask(table).set_index(table.frame.Model)
    assert mask.loc["OPM + XKD-z", "Avg (Orion)"] and not mask.loc["Original (teacher)", "Avg (Orion)"]
    assert not mask["Avg (paper)"].any()
    obj = json.loads(Path(items[1].path).read_text())
    obj["turn2"] = None  # every turn-2 judgment failed: a gap, not a number
    items[1] = Item("chat", items[1].model, _dump(tmp_path / "failed.json", obj), items[1].tag, items[1].detail)
    frame = mtbench_table(items=items, train_init="paper", paper_reference=False).frame
    assert math.isnan(frame.set_index("Model").loc["OPM", "Turn 2 (Orion)"])
    obj["turn1"] = "7"
    with pytest.raises(KeptError, match="'turn1' is not a finite number"):
        mtbench_table(items=[Item("chat", "init-paper", _dump(tmp_path / "str.json", obj), "orion")],
                      train_init="paper", paper_reference=False)
    bad = Item("chat", "ut", items[3].path, "llama3")  # an orion file wired as llama3
    with pytest.raises(KeptError, match="'format'"):
        mtbench_table(items=[bad], train_init="paper", paper_reference=False)


def test_kommlu_code_longctx_fidelity_tables(tmp_path):
    kom = [Item("base", m, _dump(tmp_path / f"k-{m}.json", {
        "model": m, "variant": "base", "suite": "kommlu", "limit": None, "columns": [], "average": 0.4 + 0.1 * i,
        "macro": 0.4 + 0.1 * i, "micro": 0.45 + 0.1 * i, "lm_eval_version": "0.4.13"}))
        for i, m in enumerate(["teacher", "ut", "xkd_z"])]
    table = kommlu_table(items=kom, train_init="paper", paper_reference=True)
    frame = table.frame.set_index("Model")
    assert frame.loc["OPM + XKD-z", "Macro"] == pytest.approx(60.0)
    assert frame.loc["OPM + XKD-z", "Micro"] == pytest.approx(65.0)
    assert frame.loc["OPM + XKD-z", "Paper"] == 66.87 and math.isnan(frame.loc["OPM + UT", "Paper"])

    code = []
    for m, p, a in [("teacher", 2.0, 0.9), ("ut", 5.0, 0.5), ("xkd_z", 2.5, 0.85)]:
        n = 20
        rows = [{"id": f"code-{i}", "nll": math.log(p) * (8 + i % 3), "tokens": 8 + i % 3, "correct": i < a * n,
                 "generation": ""} for i in range(n)]
        details = tmp_path / f"c-{m}.items.jsonl"
        details.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code.append(Item("base", m, _dump(tmp_path / f"c-{m}.json", {"model": m, "variant": "base", "ppl": p,
                                                                    "accuracy": a, "n": n}), detail=str(details)))
    table = code_table(items=code, train_init="paper")
    mask = best_mask(table).set_index(table.frame.Model)
    assert mask.loc["OPM + XKD-z", "Code ppl"] and not mask.loc["OPM + UT", "Code ppl"]  # lower is better
    assert mask.loc["OPM + XKD-z", "Code accuracy"]  # 17 vs 10 of 20 items, nested: 7 discordant, p = 2/128
    assert table.tests[("base", "Code accuracy")].p == pytest.approx(2 / 128)
    assert table.frame.set_index("Model").loc["OPM + UT", "Code accuracy"] == pytest.approx(50.0)
    assert table.se["Code ppl"].iloc[2] == pytest.approx(0.0, abs=1e-9)  # every item has ppl 2.5 exactly

    lc = [Item("longchat", m, longctx(tmp_path / f"l-{m}.json", variant="longchat", model=m, scale=s, docs=6))
          for m, s in [("teacher", 3.0), ("xkd_z", 3.1), ("ut", 9.0)]]
    table = longctx_table(items=lc, train_init="paper")
    assert table.value_columns == ["en @128", "en @256", "ko @128", "ko @256"]  # only beyond 64 tokens
    assert table.frame.set_index("Model").loc["OPM + UT", "en @256"] == pytest.approx(9.0 * 1.256)
    assert 0 < table.se["en @256"].iloc[1] < 0.5  # bootstrap over six documents
    assert best_mask(table).set_index(table.frame.Model).loc["OPM + XKD-z", "en @256"]  # every document: p = 2/64
    with pytest.raises(KeptError, match="beyond the training length"):
        longctx_table(items=[Item("longchat", "ut", longctx(tmp_path / "l.json", variant="longchat", model="ut",
                                                             scale=1.0, tml=4096))], train_init="paper")

    fid = [Item("base", f"init-{n}", fidelity(tmp_path / n / "model", norm=n, kl=k, top1=t))
           for n, k, t in [("paper", 0.5, 0.6), ("exact", 1e-7, 0.999), ("fit", 0.3, 0.7)]]
    table = fidelity_table(items=fid, train_init="paper")
    mask = best_mask(table).set_index(table.frame.Model)
    assert mask.loc["Exact", ["KL mean", "Top-1 agreement"]].all() and not mask.loc["OPM"].any()
    assert not mask[["KL max", "Max abs dlogit", "Max layer rel. err"]].any().any()  # extremes: never tested
    md = render_markdown(table)
    assert "1e-07 ± " in md and " 3e-07 |" in md
    wrong = Item("base", "init-fit", str(tmp_path / "paper" / "model"))
    with pytest.raises(KeptError, match="'norm' is 'paper'"):
        fidelity_table(items=[wrong], train_init="paper")


# ---- figures -----------------------------------------------------------------------------------------------


def _is_png_pdf(prefix: Path) -> bool:
    png = Path(f"{prefix}.png").read_bytes()
    pdf = Path(f"{prefix}.pdf").read_bytes()
    return png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF")


def test_recovery_figure(tmp_path):
    sub = H6[:2]
    items = [Item("base", "teacher", harness(tmp_path / "t.json", variant="base", model="teacher",
                                             values=[0.9] * 6)),
             Item("base", "init-paper", harness(tmp_path / "i.json", variant="base", model="init-paper",
                                                values=[0.2, 0.4, 0, 0, 0, 0]))]
    for m, slope in (("ut", 0.001), ("xkd_z", 0.002)):
        for step in (100, 200):
            v = min(0.3 + slope * step, 1.0)
            items.append(Item("base", m, harness(tmp_path / m / f"step-{step}.json", variant="base", model=m,
                                                 values=[v, v], names=sub, suite="recovery"), str(step)))
    # the last step of a student H6 evaluates in full: its h6 summary, scored on the variant's subset
    items.append(Item("base", "xkd_z", harness(tmp_path / "xkd_z-h6.json", variant="base", model="xkd_z",
                                               values=[0.8, 0.9, 0, 0, 0, 0]), "300"))
    frame = recovery_figure(items=items, train_init="paper", png=tmp_path / "f.png", pdf=tmp_path / "f.pdf")
    assert _is_png_pdf(tmp_path / "f")
    xkd = frame[frame.method == "OPM + XKD-z"]
    assert xkd.step.tolist() == [0, 100, 200, 300]
    assert xkd.score.tolist() == pytest.approx([30.0, 50.0, 70.0, 85.0])  # step 0 = init mean over ARC, HellaSwag
    assert xkd.se.tolist()[-1] == pytest.approx(100 * math.sqrt(2) * 0.01 / 2)
    with pytest.raises(KeptError, match="has no recovery summary"):
        recovery_figure(items=[items[0], items[-1]], train_init="paper", png=tmp_path / "h.png",
                        pdf=tmp_path / "h.pdf")
    items.pop()
    frame = recovery_figure(items=items, train_init="paper", png=tmp_path / "f.png", pdf=tmp_path / "f.pdf")
    xkd = frame[frame.method == "OPM + XKD-z"]
    assert xkd.se.tolist() == pytest.approx([100 * math.sqrt(2) * 0.01 / 2] * 3)  # two columns' stderr, propagated
    with pytest.raises(KeptError, match="recovery subset"):
        bad = harness(tmp_path / "b.json", variant="base", model="teacher", values=[0.9] * 2, names=H6[2:4])
        recovery_figure(items=[*items[2:], Item("base", "teacher", bad)], train_init="paper",
                        png=tmp_path / "g.png", pdf=tmp_path / "g.pdf")
    assert not (tmp_path / "g.png").exists()


def test_longctx_mtbench_loss_pilot_figures(tmp_path):
    lc = [Item("longchat", m, longctx(tmp_path / f"l-{m}.json", variant="longchat", model=m, scale=s, docs=d))
          for m, s, d in [("teacher", 3.0, 6), ("xkd_z", 3.1, 0)]]
    frame = longctx_figure(items=lc, train_init="paper", png=tmp_path / "l.png", pdf=tmp_path / "l.pdf")
    assert _is_png_pdf(tmp_path / "l") and len(frame) == 2 * 2 * 4
    assert (frame[frame.model == "Original (teacher)"].se > 0).all() and frame[frame.model != "Original (teacher)"].se.isna().all()

    mt = [Item("chat", m, mtbench(tmp_path / f"{m}-{f}.json", variant="chat", model=m, fmt=f, t1=5, t2=4), f)
          for m, f in [("teacher", "orion"), ("xkd_z", "orion"), ("xkd_z", "llama3")]]
    frame = mtbench_category_figure(items=mt, train_init="paper", png=tmp_path / "m.png", pdf=tmp_path / "m.pdf")
    assert _is_png_pdf(tmp_path / "m") and len(frame) == 3 * 8 and set(frame.format) == {"Orion", "Llama-3"}
    assert frame.se.isna().all()  # no judgment files: no error bars, never invented ones
    # with judgments, each category's bar has the standard error over its questions; the spread figure puts every
    # student's average beside the teacher
    details = [judgments(tmp_path / "j" / f"{it.model}-{it.tag}.jsonl", model=it.model, t1=[4, 6] * 8, t2=[5] * 16)
               for it in mt]
    for it, d in zip(mt, details):
        obj = json.loads(Path(it.path).read_text())
        for i, cat in enumerate(obj["by_category"]):
            obj["by_category"][cat]["question_ids"] = [81 + 2 * i, 82 + 2 * i]
        Path(it.path).write_text(json.dumps(obj))
    mt = [Item(it.variant, it.model, it.path, it.tag, d) for it, d in zip(mt, details)]
    frame = mtbench_category_figure(items=mt, train_init="paper", png=tmp_path / "m.png", pdf=tmp_path / "m.pdf")
    assert frame.se.tolist() == pytest.approx([0.5] * 24, rel=0.15)  # question means 4.5 and 5.5
    spread = mtbench_spread_figure(items=mt, train_init="paper", png=tmp_path / "s.png", pdf=tmp_path / "s.pdf")
    assert _is_png_pdf(tmp_path / "s") and set(spread.panel) == {"Orion", "Llama-3"}
    assert spread[~spread.teacher].se.tolist() == pytest.approx([math.sqrt(0.25 / 16)] * 2, rel=0.15)

    logs = []
    for m in ("ut", "xkd_h", "xkd_z"):
        path = tmp_path / m / "train_log.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-4, "tokens": 64 * s,
                                            "tokens_per_s": 1.0, "elapsed_s": s}) + "\n" for s in range(1, 6)))
        logs.append(Item("base", m, str(path)))
    frame = train_loss_figure(items=logs, train_init="paper", png=tmp_path / "t.png", pdf=tmp_path / "t.pdf")
    assert _is_png_pdf(tmp_path / "t") and len(frame) == 15
    Path(logs[1].path).write_text('{"step": 1, "loss": 1.0}\n{"step": 2}\n')
    with pytest.raises(KeptError, match=r"train_log.jsonl:2: missing key 'loss'"):
        train_loss_figure(items=logs, train_init="paper", png=tmp_path / "u.png", pdf=tmp_path / "u.pdf")

    path = tmp_path / "pilot" / "cosine.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"step": s, "cos_mean": s / 10, "cos": [s / 10 - 0.05, s / 10 + 0.05]})
                            + "\n" for s in range(0, 10, 2)))
    frame = pilot_figure(items=[Item("base", "pilot", str(path))], png=tmp_path / "p.png", pdf=tmp_path / "p.pdf")
    assert _is_png_pdf(tmp_path / "p") and set(frame.site) == {"mean", "0", "1"}


def test_report_cli(h6_grid, tmp_path, capsys):
    argv = ["report", "table", "h6", "--out", str(tmp_path / "cli" / "h6"), "--paper-reference"]
    for it in h6_grid:
        argv += ["--item", f"{it.variant}:{it.model}={it.path},{it.detail}"]
    assert kept_main(argv) == 0
    expected = best_mask(h6_table(items=h6_grid, train_init="paper", paper_reference=True)).sum().sum()
    assert expected >= 2 and (tmp_path / "cli" / "h6.tex").read_text().count("\\textbf") == expected
    assert kept_main(["report", "table", "h6", "--out", str(tmp_path / "x"), "--item", "base=nothing"]) == 1
    assert "VARIANT:MODEL" in capsys.readouterr().err


def test_spread_legend_stays_off_the_data(tmp_path, monkeypatch):
    """The spread figures' legend sits below the panels: it overlaps no axes (it used to cover the base
    panel's last point)."""
    import pandas as pd

    from kept.report import figures

    captured = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, **kw: captured.setdefault("fig", fig))
    rows = [{"variant": v, "model": m, "panel": "H6 average", "score": s, "se": 1.0, "seeds": 1, "teacher": t}
            for v in ("base", "chat") for m, s, t in (("Teacher", 68.0, True), ("OPM", 30.0, False),
                                                     ("OPM + XKD-z", 67.0, False), ("Exact", 66.5, False))]
    figures._spread_plot(pd.DataFrame(rows), xlabel="H6 average (%)", floor=20.0, reference=None,
                         png=tmp_path / "x.png", pdf=tmp_path / "x.pdf", dpi=50)
    fig = captured["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "legend over a panel"
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"teacher (H6 average)", "floor"}


def test_divergence_table(tmp_path):
    """One row per variant and init: class and changed modules in the label, fidelity, H6 of teacher / mapping /
    each method, and the share of the margin regained with its error; a margin within noise gives no share."""
    from kept.report.tables import divergence_table

    values = {("base", "teacher"): [0.8] * 6, ("base", "init-paper"): [0.3] * 6, ("base", "ut"): [0.6] * 6,
              ("base", "xkd_h"): [0.7] * 6, ("base", "xkd_z"): [0.75] * 6,
              ("neox", "teacher"): [0.8] * 6, ("neox", "init-paper"): [0.8] * 6, ("neox", "ut"): [0.7] * 6,
              ("neox", "xkd_h"): [0.78] * 6, ("neox", "xkd_z"): [0.8] * 6}
    items = [Item(variant=i.variant, model=i.model, path=i.path, detail=i.detail, tag="h6")
             for i in h6_items(tmp_path, values)]
    for v, family, cls, div in (("base", "orion", "approximate", [{"module": "norm", "change": "x"}]),
                                ("neox", "gpt_neox", "approximate", [{"module": "norm", "change": "x"},
                                                                     {"module": "residual", "change": "y"}])):
        d = tmp_path / v / "init-paper" / "model"
        fidelity(d, norm="paper", kl=0.5, top1=0.4)
        _dump(d / "conversion.json", {"family": family, "exactness": cls, "divergences": div})
        items.append(Item(variant=v, model="init-paper", path=str(d), detail=str(d), tag="fidelity"))
    table = divergence_table(items=items, train_init="paper")
    f = table.frame.set_index("Variant")
    assert f.at["neox", "Model"] == "gpt_neox -> Llama, OPM: approximate (changed: norm, residual)"
    assert f.at["base", "H6 teacher"] == pytest.approx(80.0) and f.at["base", "H6 mapping"] == pytest.approx(30.0)
    assert f.at["base", "XKD-z regained (%)"] == pytest.approx(90.0)  # (75 - 30) / (80 - 30)
    assert f.at["base", "UT regained (%)"] == pytest.approx(60.0)
    se = table.se.set_index(table.frame["Variant"])
    assert 0 < se.at["base", "UT regained (%)"] < 20
    assert math.isnan(f.at["neox", "UT regained (%)"])  # no margin to regain: no share
    assert f.at["neox", "KL"] == pytest.approx(0.5)
    md = render_markdown(table)
    assert "±" in md and "gpt_neox -> Llama" in md
    assert not any(c.startswith("Tokens to") for c in table.frame.columns)  # no recovery curves: no column

    # recovery curves (subset ARC + HellaSwag; teacher 80, base's mapping 30): XKD-z reaches 0.99 x 80 = 79.2 at
    # step 20, XKD-h only at step 40, UT never; 100 tokens per step (train log)
    sub = H6[:2]
    curves = {"ut": {20: 0.5, 40: 0.6}, "xkd_h": {20: 0.7, 40: 0.795}, "xkd_z": {20: 0.8, 40: 0.8}}
    for m, curve in curves.items():
        log = tmp_path / "base" / m / "train_log.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(json.dumps({"step": s, "loss": 1.0, "tokens": 100 * s}) + "\n" for s in (5, 40)))
        items.append(Item("base", m, str(log), "train", str(log)))
        for step, v in curve.items():
            path = harness(tmp_path / "base" / "recovery" / m / f"step-{step}.json", variant="base", model=m,
                           values=[v, v], names=sub, suite="recovery")
            items.append(Item("base", m, path, f"recovery-{step}", path))
    table = divergence_table(items=items, train_init="paper")
    f = table.frame.set_index("Variant")
    assert f.at["base", "Tokens to 0.99 XKD-z"] == pytest.approx(2000)
    assert f.at["base", "Tokens to 0.99 XKD-h"] == pytest.approx(4000)
    assert math.isinf(f.at["base", "Tokens to 0.99 UT"])
    assert math.isnan(f.at["neox", "Tokens to 0.99 UT"])  # no curve for that variant: no figure, never invented
    md = render_markdown(table)
    assert "not within budget" in md and "2e+03" in md

    # a second seed of base's UT (50 where the first has 60): the row pools them, with their spread across seeds
    second = [Item(i.variant, i.model, i.path, "h6", i.detail) for i in h6_items(tmp_path, {("base", "ut.s1235"): [0.5] * 6})]
    table = divergence_table(items=items + second, train_init="paper")
    f = table.frame.set_index("Variant")
    sd = table.sd.set_index(table.frame["Variant"])
    assert f.at["base", "H6 UT"] == pytest.approx(55.0) and sd.at["base", "H6 UT"] == pytest.approx(math.sqrt(50))
    assert math.isnan(sd.at["base", "H6 XKD-z"]) and math.isnan(sd.at["neox", "H6 UT"])  # one seed: no spread
    assert table.seeds == [2, 1]
    assert f"(sd {math.sqrt(50):.1f})" in render_markdown(table)


def test_divergence_figure(tmp_path, monkeypatch):
    """The divergence figure plots, per variant and init, each student's (and the mapping's) H6 gap to the
    teacher with the error of the difference, variants ordered by the mapping's KL within each init's panel."""
    from kept.report import figures
    from kept.report.figures import divergence_figure
    from kept.report.tables import divergence_table

    values = {("base", "teacher"): [0.8] * 6, ("base", "init-paper"): [0.3] * 6, ("base", "init-exact"): [0.8] * 6,
              ("base", "ut"): [0.6] * 6, ("base", "xkd_z"): [0.75] * 6,
              ("neox", "teacher"): [0.7] * 6, ("neox", "init-paper"): [0.2] * 6, ("neox", "init-exact"): [0.3] * 6,
              ("neox", "ut"): [0.5] * 6, ("neox", "xkd_z"): [0.6] * 6}
    items = [Item(variant=i.variant, model=i.model, path=i.path, detail=i.detail, tag="h6")
             for i in h6_items(tmp_path, values)]
    for v, family, kl in (("neox", "gpt_neox", 6.0), ("base", "orion", 0.5)):
        for init in ("paper", "exact"):
            d = tmp_path / v / f"init-{init}" / "model"
            fidelity(d, norm=init, kl=kl if init == "paper" else kl / 10, top1=0.4)
            _dump(d / "conversion.json", {"family": family, "exactness": "approximate", "divergences": []})
            items.append(Item(variant=v, model=f"init-{init}", path=str(d), detail=str(d), tag="fidelity"))
    frame = divergence_figure(items=items, train_init="paper", png=tmp_path / "d.png", pdf=tmp_path / "d.pdf", dpi=50)
    assert _is_png_pdf(tmp_path / "d")
    table = divergence_table(items=items, train_init="paper")
    se = table.se.set_index(table.frame["Variant"] + "/" + table.frame["Model"].str.extract(r", (\w+):")[0])
    g = frame.set_index(["variant", "mapping", "who"])
    assert g.at[("base", "OPM", "mapping alone"), "gap"] == pytest.approx(-50.0)
    assert g.at[("neox", "OPM", "XKD-z"), "gap"] == pytest.approx(-10.0)
    assert g.at[("base", "Exact", "mapping alone"), "gap"] == pytest.approx(0.0)
    # the error of a difference of two independent scores, each with lm-eval's stderr
    assert g.at[("base", "OPM", "UT"), "se"] == pytest.approx(math.hypot(se.at["base/OPM", "H6 UT"],
                                                                          se.at["base/OPM", "H6 teacher"]))
    assert g.at[("base", "OPM", "UT"), "se"] > 0
    assert ("base", "Exact", "UT") not in g.index  # the students start from paper only: no invented row
    assert set(frame.family) == {"orion", "gpt_neox"} and g.at[("neox", "OPM", "UT"), "kl"] == pytest.approx(6.0)

    # each panel orders its variants by the mapping's KL (base 0.5 before neox 6.0, though neox comes first)
    captured = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, **kw: captured.setdefault("fig", fig))
    divergence_figure(items=items, train_init="paper", png=tmp_path / "e.png", pdf=tmp_path / "e.pdf", dpi=50)
    ax = captured["fig"].axes[0]
    assert ax.get_title() == "init: OPM"
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["base", "neox"]
    # below: each family's cost (share of the teacher's margin regained) against its KL, per method
    assert g.at[("neox", "OPM", "XKD-z"), "regained"] == pytest.approx(80.0)  # (60 - 20) / (70 - 20)
    cost = next(a for a in captured["fig"].axes if a.get_ylabel() == "teacher's margin regained (%)"
                and a.get_title().startswith("init: OPM"))
    lines = {c.get_label(): c.lines[0] for c in cost.containers}  # errorbar containers: the data line first
    assert cost.get_xscale() == "log" and list(lines["XKD-z"].get_xdata()) == [0.5, 6.0]
    assert list(lines["XKD-z"].get_ydata()) == pytest.approx([90.0, 80.0])


def test_divergence_log_axes_take_zero_and_unreached_tokens():
    """The default run's divergence figure failed to draw once the regime's teachers converged: every Exact student
    was at 0.99 of its teacher from step 0 (0 tokens) and no OPM student reached it (inf). A log axis takes
    neither; _log_axis falls back to symlog for zeros and leaves an axis with nothing finite linear."""
    import matplotlib.pyplot as plt

    from kept.report.figures import _log_axis

    fig, axes = plt.subplots(1, 3)
    for ax, values in zip(axes, ([0.0, 0.0], [float("inf"), None], [0.5, 20.0])):
        ax.plot([1, 2], [1, 2])
        _log_axis(ax.set_yscale, values)
    assert [ax.get_yscale() for ax in axes] == ["symlog", "linear", "log"]
    fig.canvas.draw()
    plt.close(fig)


def graft_fixture(root: Path) -> list[Item]:
    """A graft grid of variant g8 (8 KV heads): the exact mapping, then G = 4 and 2 by mean and fit, each with its
    students (H6), fidelity (mean's KL 0.8 at G = 4, fit's 0.2), config.json and measured KV cache; recovery curves
    for the G = 2 fit students (100 tokens per step)."""
    inits = {"exact": (8, 0.01, 0.7), "exact-kv4-mean": (4, 0.8, 0.4), "exact-kv4-fit": (4, 0.2, 0.6),
             "exact-kv2-mean": (2, 1.6, 0.3), "exact-kv2-fit": (2, 0.6, 0.5)}
    values = {("g8", "teacher"): [0.8] * 6}
    for init, (_, _, h6) in inits.items():
        values[("g8", f"init-{init}")] = [h6] * 6
        suffix = "" if init == "exact" else f"@{init}"
        values |= {("g8", f"ut{suffix}"): [h6 + 0.05] * 6, ("g8", f"xkd_h{suffix}"): [h6 + 0.08] * 6,
                   ("g8", f"xkd_z{suffix}"): [h6 + 0.1] * 6}
    items = [Item(i.variant, i.model, i.path, "h6", i.detail) for i in h6_items(root, values)]
    for init, (g, kl, _) in inits.items():
        d = root / "g8" / f"init-{init}" / "model"
        fidelity(d, norm="exact", kl=kl, top1=1 - kl / 2)
        _dump(d / "conversion.json", {"family": "orion", "exactness": "approximate", "divergences": []})
        _dump(d / "config.json", {"num_key_value_heads": g})
        items.append(Item("g8", f"init-{init}", str(d), "fidelity", str(d)))
        kv = _dump(root / "g8" / "eval" / f"init-{init}" / "kv_cache.json",
                   {"variant": "g8", "model": f"init-{init}", "tokens": 256, "kv_cache_bytes_per_token": 512.0 * g})
        items.append(Item("g8", f"init-{init}", kv, "kv", kv))
    for m, curve in {"ut@exact-kv2-fit": {30: 0.6, 60: 0.7}, "xkd_z@exact-kv2-fit": {30: 0.795, 60: 0.8}}.items():
        log = _dump(root / "g8" / m / "train_log.jsonl", {"step": 60, "loss": 1.0, "tokens": 6000})
        items.append(Item("g8", m, log, "train", log))
        for step, v in curve.items():
            path = harness(root / "g8" / "recovery" / m / f"step-{step}.json", variant="g8", model=m,
                           values=[v, v], names=H6[:2], suite="recovery")
            items.append(Item("g8", m, path, f"recovery-{step}", path))
    return items


def test_graft_table(tmp_path):
    """One row per G and init after the no-graft mapping: measured KV bytes and heads, the mapping's KL with its
    ratio to mean's at the same G, H6 of the mapping and of each method, tokens to 0.99 where there are curves."""
    from kept.report.tables import graft_table

    items = graft_fixture(tmp_path)
    table = graft_table(items=items, train_init="exact")
    f = table.frame.set_index("Model")
    assert list(f.index) == ["Exact, no graft", "GQA-4 mean (from Exact)", "GQA-4 fit (from Exact)",
                             "GQA-2 mean (from Exact)", "GQA-2 fit (from Exact)"]
    assert f.at["Exact, no graft", "KV bytes/token"] == 4096 and f.at["GQA-2 fit (from Exact)", "KV heads"] == 2
    assert f.at["GQA-4 fit (from Exact)", "KL / mean"] == pytest.approx(0.25)
    assert f.at["GQA-4 mean (from Exact)", "KL / mean"] == pytest.approx(1.0)
    assert math.isnan(f.at["Exact, no graft", "KL / mean"])
    assert f.at["GQA-2 fit (from Exact)", "KL"] == pytest.approx(0.6)
    assert f.at["GQA-2 fit (from Exact)", "Max |dlogit|"] == pytest.approx(6.0)
    assert f.at["GQA-2 mean (from Exact)", "H6 mapping"] == pytest.approx(30.0)
    assert f.at["GQA-4 fit (from Exact)", "H6 XKD-z"] == pytest.approx(70.0)
    assert f.at["GQA-4 fit (from Exact)", "H6 UT"] == pytest.approx(65.0)
    assert f.at["GQA-2 fit (from Exact)", "Tokens to 0.99 XKD-z"] == pytest.approx(3000)  # 79.5 >= 79.2 at step 30
    assert math.isinf(f.at["GQA-2 fit (from Exact)", "Tokens to 0.99 UT"])
    assert math.isnan(f.at["GQA-4 fit (from Exact)", "Tokens to 0.99 UT"])  # no curve: no figure
    se = table.se.set_index(table.frame["Model"])
    assert se.at["GQA-4 fit (from Exact)", "KL"] > 0 and se.at["GQA-4 fit (from Exact)", "H6 XKD-z"] > 0
    assert math.isnan(se.at["GQA-4 fit (from Exact)", "KV bytes/token"])  # one measurement: no interval
    md = render_markdown(table)
    assert "GQA-2 fit (from Exact)" in md and "not within budget" in md

    # a KV measurement missing, or a config that does not hold the named G: one line naming the file or cell
    with pytest.raises(KeptError, match="kv_cache.json.*g8 init-exact-kv2-fit"):
        graft_table(items=[i for i in items if not (i.tag == "kv" and i.model == "init-exact-kv2-fit")],
                    train_init="exact")
    _dump(tmp_path / "g8" / "init-exact-kv2-fit" / "model" / "config.json", {"num_key_value_heads": 4})
    with pytest.raises(KeptError, match="config.json: num_key_value_heads is 4, but the init init-exact-kv2-fit"):
        graft_table(items=items, train_init="exact")
