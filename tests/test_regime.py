"""The bench's regime (issue 26): a transfer corpus that is a narrow slice of what the teachers know, checked on
the corpus files as written; suite items tagged in / out of it; the regime check (Teacher + UT against the teacher)
failing on an undertrained teacher; the regime, split and power tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kept.corpus import CorpusConfig, prepare_corpus
from kept.errors import ConfigError, KeptError
from kept.grid import CONTROL, is_control, parse, trained
from kept.report.inputs import Item
from kept.report.regime import mde, power_table, regime_checks, regime_table, split_table, write_text_table
from kept.report.results import RunResults
from kept.world import lexicon as lx
from kept.world.evaldata import EvalDataConfig, write_eval_data
from kept.world.generator import WorldSpec, covered_entities
from kept.world.items import question_en
from kept.world.render import DOMAINS, load_world, stated_facts, write_world
from kept.world.tokenizer import load_sp, train_tokenizer

SPEC = dict(seed=11, n_people=12, n_cities=4, heldout_percent=40, passages_per_entity=2, quiz_docs=60,
            dialogues=40, programs=20, long_docs=1, long_doc_chars=800)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regime")
    write_world(spec=WorldSpec(**SPEC), output=root / "world")
    train_tokenizer(text_files=[root / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                    output=root / "tokenizer.model", vocab_size=1000)
    return root


def _corpus(root: Path, name: str, *, coverage: float, domains=("passages",), budget: int = 12000) -> Path:
    text = root / "world" / "text"
    prepare_corpus(CorpusConfig(output=str(root / name), tokenizer=str(root / "tokenizer.model"), source="world",
                                passages=str(text / "passages.jsonl"), token_budget=budget, max_length=64, seed=3,
                                world_texts=[str(text / f"{d}.jsonl") for d in domains if d != "passages"],
                                coverage=coverage, world=str(root / "world")))
    return root / name


def _documents(root: Path, corpus: Path) -> list[str]:
    """The corpus as written: its shards' rows in order, cut at EOS into documents, decoded."""
    sp = load_sp(root / "tokenizer.model")
    manifest = json.loads((corpus / "manifest.json").read_text())
    ids = np.concatenate([np.load(corpus / s).reshape(-1) for s in manifest["shards"]]).tolist()
    docs, cur = [], []
    for t in ids:
        if t == manifest["eos_id"]:
            docs.append(sp.decode(cur))
            cur = []
        else:
            cur.append(t)
    return docs + [sp.decode(cur)]


def _wordings(w, eid: str, rel: str) -> list[str]:
    """Every way the world words the fact: each statement template in each language, and each English and Korean
    question about it (the quiz and dialogue forms)."""
    out = [w.statement(eid, rel, lang, v) for lang in lx.LANGS for v in range(len(lx.STATEMENTS[rel][lang]))]
    out += [w.fill(t, w.name(eid, "en"), "", "en") for t in lx.QUESTIONS_EN[rel]]
    out += [w.fill(t, w.name(eid, "ko"), "", "ko") for t in lx.QUESTIONS_KO[rel]]
    return out


@pytest.mark.parametrize("domains", [("passages",), ("passages", "quiz", "dialogue")])
def test_the_narrow_corpus_never_states_an_out_of_corpus_fact(world, domains):
    """Issue 26: no fact the suites tag out_of_corpus appears in the written transfer corpus, in any wording or
    language (also with the quiz and dialogue of the breadth ablation), while the in-corpus facts do appear."""
    w = load_world(world / "world")
    corpus = _corpus(world, "narrow-" + "-".join(domains), coverage=0.5, domains=domains)
    docs = _documents(world, corpus)
    eval_dir = world / f"eval-{len(domains)}"
    write_eval_data(EvalDataConfig(world=str(world / "world"), tokenizer=str(world / "tokenizer.model"),
                                   output=str(eval_dir), items_per_task=40, shots_pool=25, mtbench_per_category=1,
                                   longctx_docs=1, longctx_min_tokens=64, code_items=4, coverage=0.5,
                                   corpus_domains=list(domains)))
    tagged = {}
    for task in ("toy_arc", "toy_hellaswag", "toy_mmlu", "toy_truthfulqa_mc2", "toy_winogrande", "toy_kommlu"):
        for line in (eval_dir / "tasks" / f"{task}.jsonl").read_text().splitlines():
            doc = json.loads(line)
            if "fact" in doc:
                tagged[doc["fact"]] = doc["corpus"]
    out = [f for f, tag in tagged.items() if tag == "out"]
    inside = [f for f, tag in tagged.items() if tag == "in"]
    assert len(out) >= 5 and len(inside) >= 5
    text = "\n".join(docs)
    for fact in out:
        eid, rel = fact.split(":")
        found = [s for s in _wordings(w, eid, rel) if s in text]
        assert not found, f"out-of-corpus fact {fact} is in the transfer corpus: {found[:2]}"
    stated = [f for f in inside if any(s in text for s in _wordings(w, *f.split(":")))]
    assert len(stated) == len(inside)  # the check reads real text: every in-corpus fact is there
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["coverage"] == 0.5 and sum(manifest["documents_left_out_per_language"].values()) > 0
    assert set(manifest["uncovered_entities"]) == set(w.entities) - covered_entities(w, 0.5)


def test_full_coverage_states_every_fact_and_the_split_is_exact(world):
    w = load_world(world / "world")
    docs = "\n".join(_documents(world, _corpus(world, "full", coverage=1.0, budget=40000)))
    some = [f"{e}:{r}" for e, r in w.fact_pairs()[::7]]
    assert all(any(s in docs for s in _wordings(w, *f.split(":"))) for f in some)
    covered = covered_entities(w, 0.5)
    assert len(covered & set(w.people)) == 6 and len(covered & set(w.cities)) == 2
    assert covered_entities(w, 0.5) == covered  # the corpus and the suites agree without sharing a file
    with pytest.raises(ConfigError, match="coverage"):
        covered_entities(w, 0.0)
    with pytest.raises(ConfigError, match="coverage < 1"):
        CorpusConfig(output="o", tokenizer="t", source="miracl", coverage=0.5)


def test_items_and_rubrics_are_tagged_by_the_fact_they_ask(world):
    eval_dir = world / "eval-tags"
    write_eval_data(EvalDataConfig(world=str(world / "world"), tokenizer=str(world / "tokenizer.model"),
                                   output=str(eval_dir), items_per_task=30, shots_pool=25, mtbench_per_category=1,
                                   longctx_docs=1, longctx_min_tokens=64, code_items=4, coverage=0.5))
    w = load_world(world / "world")
    covered = covered_entities(w, 0.5)
    stated = stated_facts(world / "world" / "text", ["passages"], covered)
    assert {f.split(":")[0] for f in stated} <= covered  # what the corpus states is about covered entities only
    rows = [json.loads(line) for line in (eval_dir / "tasks" / "toy_mmlu.jsonl").read_text().splitlines()]
    for doc in rows:
        expected = "in" if "fact" in doc and doc["fact"] in stated else "out"
        assert doc["corpus"] == expected  # vocabulary questions: out (no passage says which kind a word is)
    for task in ("toy_arc", "toy_mmlu", "toy_gsm8k", "toy_winogrande"):  # lm-eval reads both splits with one schema
        keys = [{k for line in (eval_dir / "tasks" / f"{task}{part}.jsonl").read_text().splitlines()
                 for k in json.loads(line)} for part in ("", ".shots")]
        assert keys[0] == keys[1], task
    gsm = [json.loads(line) for line in (eval_dir / "tasks" / "toy_gsm8k.jsonl").read_text().splitlines()]
    assert {d["corpus"] for d in gsm} == {"out"}
    rubrics = [json.loads(line) for line in (eval_dir / "mtbench" / "rubric.jsonl").read_text().splitlines()]
    tags = [t for r in rubrics for turn in r["turns"] for t in turn["corpus"]]
    assert set(tags) == {"in", "out"} and all(len(t["corpus"]) == len(t["required"]) for r in rubrics
                                              for t in r["turns"])
    assert json.loads((eval_dir / "manifest.json").read_text())["tasks"]["toy_gsm8k"]["in_corpus"] == 0


def test_the_control_is_named_in_the_grid_and_is_ut_only():
    assert CONTROL == "ut@teacher" and is_control(CONTROL) and parse(CONTROL).control
    assert not is_control("ut@exact") and not is_control("teacher")
    with pytest.raises(ConfigError, match="only UT"):
        trained("xkd_z", init="teacher", corpus=None, seed=1, primary_init="paper", primary_seed=1)


@pytest.mark.parametrize("configfile", ["config.yaml", "config/families.yaml"])
def test_every_toy_teacher_of_a_shipped_config_has_its_control(configfile):
    """Issue 26: every teacher of the default and the families run is checked by its Teacher + UT; a variant added
    without one (the zoo's qwen2 / qwen3 / falcon before this test) would silently get no regime row, since the
    workflow keeps only the named variants that exist."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / configfile).read_text())
    toy = {name for name, v in cfg["variants"].items() if v["source"]["kind"] == "toy"}
    assert toy and toy <= set(cfg["train"]["teacher_ut"]), sorted(toy - set(cfg["train"]["teacher_ut"]))


# ---- the regime check on a real undertrained teacher ---------------------------------------------------------

def test_regime_check_fails_for_an_undertrained_teacher(world):
    """A 100-step teacher is still learning: the control (the teacher trained further with UT on the narrow
    transfer corpus, in its own format) lowers the loss on the teacher's held-out pretraining mixture, and the
    teacher's final loss slope is negative, so the regime check fails."""
    from kept.eval.mixture import MixtureLossConfig, mixture_loss
    from kept.models import model_type
    from kept.train import TrainConfig, train
    from kept.world.pretrain import PretrainConfig, pretrain_teacher

    mix = {"passages": 0.4, "quiz": 0.4, "dialogue": 0.2}
    teacher = world / "t100"
    pretrain_teacher(PretrainConfig(role="base", world=str(world / "world"), tokenizer=str(world / "tokenizer.model"),
                                    output=str(teacher), work_dir=str(world / "t100-work"), hidden_size=32,
                                    num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128,
                                    seq_len=64, steps=100, batch_size=4, lr=3e-3, warmup_steps=5, mixture=mix,
                                    train_log=str(world / "t100.train_log.jsonl"), seed=2))
    corpus = _corpus(world, "narrow-regime", coverage=0.5, budget=8000)
    control = world / "control"
    train(TrainConfig(objective="ut", student=str(teacher), corpus=str(corpus), output=str(control),
                      work_dir=str(world / "control-work"), steps=20, batch_size=4, lr=1e-3, warmup_steps=2,
                      export_format="own", progress=False))
    assert model_type(control) == "orion"  # the control stays in the teacher's own format: no conversion
    items = [Item("base", "teacher", str(world / "t100.train_log.jsonl"), "pretrain-base"),
             Item("base", CONTROL, str(world / "control-work" / "train_log.jsonl"), "train")]
    for name, model in (("teacher", teacher), (CONTROL, control)):
        out = world / f"{name}-mixture.json"
        mixture_loss(MixtureLossConfig(model=str(model), world=str(world / "world"),
                                       tokenizer=str(world / "tokenizer.model"), output=str(out), mixture=mix,
                                       seq_len=64, sequences=16, seed=2, model_name=name, variant="base"))
        items.append(Item("base", name, str(out), "mixture"))
    run = RunResults(items)
    check = regime_checks(run)
    assert check == []  # no H6 for either: the table has no row to show ...
    from kept.report.regime import RegimeCheck, last_tokens, loss_slope, paired_difference

    lines = run.pretrain["base"]["base"]
    c = RegimeCheck("base", last_tokens(lines, where="t"), last_tokens(run.train_logs[("base", CONTROL)][0], where="c"),
                    loss_slope(lines, where="t"), {}, paired_difference(run.mixture_loss("base", CONTROL),
                                                                        run.mixture_loss("base", "teacher")))
    # ... but the check reads the same measurements: the loss falls and the teacher was still descending
    assert c.mixture[2] < 0 and c.verdict == "fails: its held-out pretraining-mixture loss falls"
    assert c.slope["slope"] < 0
    assert c.pretrain_tokens == 100 * 4 * 64 and c.transfer_tokens == 20 * 4 * 64
    assert c.ratio == pytest.approx(0.2)


# ---- the tables on synthetic result files ------------------------------------------------------------------------

def _h6(root: Path, variant: str, model: str, correct: dict[str, list[bool]]) -> Item:
    """An H6 summary with lm-eval per-sample logs whose documents carry the corpus tag: item i is ``in`` when i is
    even."""
    raw = root / variant / model / "h6"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "results.json").write_text(json.dumps({"results": {}, "group_subtasks": {}}))
    cols = []
    for name, values in correct.items():
        task = f"toy_{name.lower()}"
        (raw / f"samples_{task}.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "filter": "none", "acc": float(v), "doc": {"corpus": "in" if i % 2 == 0 else
                                                                               "out"}}) + "\n"
            for i, v in enumerate(values)))
        cols.append({"name": name, "task": task, "shots": 0, "metric": "acc,none",
                     "value": sum(values) / len(values), "stderr": None, "chance": 0.25, "n": len(values)})
    path = root / variant / model / "h6.json"
    path.write_text(json.dumps({"model": model, "variant": variant, "suite": "h6", "columns": cols,
                                "average": sum(c["value"] for c in cols) / len(cols)}))
    return Item(variant, model, str(path), "h6", str(raw))


def _log(path: Path, losses: list[float], tokens_per_step: int) -> str:
    path.write_text("".join(json.dumps({"step": 10 * (i + 1), "loss": x, "tokens": 10 * (i + 1) * tokens_per_step})
                            + "\n" for i, x in enumerate(losses)))
    return str(path)


def _mixture(path: Path, model: str, values: list[float]) -> str:
    path.write_text(json.dumps({"model": model, "variant": "base", "nll": float(np.mean(values)),
                                "per_sequence": values}))
    return str(path)


def test_regime_table_holds_for_a_converged_teacher_and_fails_when_the_control_gains(tmp_path):
    rng = np.random.default_rng(0)
    teacher = (rng.random(80) < 0.7).tolist()
    flat = [0.5 + 0.001 * ((i * 7) % 5) for i in range(50)]  # a plateau: slope indistinguishable from 0
    items = [_h6(tmp_path, "base", "teacher", {"ARC": teacher, "MMLU": teacher[::-1]}),
             _h6(tmp_path, "base", CONTROL, {"ARC": teacher, "MMLU": teacher[::-1]}),
             Item("base", "teacher", _mixture(tmp_path / "t.json", "teacher", [1.0 + 0.1 * (i % 3) for i in range(32)]),
                  "mixture"),
             Item("base", CONTROL, _mixture(tmp_path / "c.json", CONTROL, [1.01 + 0.1 * (i % 3) for i in range(32)]),
                  "mixture"),
             Item("base", CONTROL, _log(tmp_path / "c.jsonl", [1.0] * 6, 2048), "train"),
             Item("base", "teacher", _log(tmp_path / "b.jsonl", flat, 8192), "pretrain-base")]
    table = regime_table(items=items, train_init="paper")
    row = table.frame.iloc[0]
    assert row["Regime"] == "holds" and row["Δ toy-H6 (all)"].startswith("+0.00 [")
    assert row["Budget ratio"] == f"{60 * 2048 / (500 * 8192):.3g}" and "e" not in row["Teacher pretraining tokens"]
    # the control now answers every in-corpus ARC item and its loss falls: the regime fails on both counts
    better = [v or i % 2 == 0 for i, v in enumerate(teacher)]
    items[1] = _h6(tmp_path / "gain", "base", CONTROL, {"ARC": better, "MMLU": teacher[::-1]})
    items[3] = Item("base", CONTROL, _mixture(tmp_path / "c2.json", CONTROL, [0.9 + 0.1 * (i % 3) for i in range(32)]),
                    "mixture")
    row = regime_table(items=items, train_init="paper").frame.iloc[0]
    assert row["Regime"].startswith("fails: Teacher + UT beats the teacher on toy-H6 (all items)")
    assert "(in corpus items)" in row["Regime"] and "mixture loss falls" in row["Regime"]
    assert row["Δ toy-H6 (out of corpus)"].startswith("+0.00")  # the gain is all on in-corpus items
    out = {ext: tmp_path / f"regime.{ext}" for ext in ("csv", "md", "tex")}
    write_text_table(regime_table(items=items, train_init="paper"), **out)
    assert "Budget ratio" in out["md"].read_text() and "\\toprule" in out["tex"].read_text()
    with pytest.raises(KeptError, match="no variant"):
        regime_table(items=items[2:], train_init="paper")


def test_split_and_power_tables(tmp_path):
    rng = np.random.default_rng(1)
    t = (rng.random(200) < 0.8).tolist()
    ut = [v and (i % 2 == 0 or rng.random() < 0.6) for i, v in enumerate(t)]  # UT forgets out-of-corpus items
    xkd = [v and rng.random() < 0.95 for v in t]
    items = [_h6(tmp_path, "base", m, {"ARC": x, "MMLU": x[2:] + x[:2]}) for m, x in
             (("teacher", t), ("ut", ut), ("xkd_z", xkd), (CONTROL, ut))]
    table = split_table(items=items, train_init="paper")
    frame = table.frame.set_index("Model")
    assert frame.loc["OPM + UT", "H6 (out of corpus)"] < frame.loc["OPM + UT", "H6 (in corpus)"]
    assert frame.loc["Teacher + UT", "H6 (in corpus)"] == frame.loc["Original (teacher)", "H6 (in corpus)"]
    assert not table.contender[list(frame.index).index("Teacher + UT")]  # the control competes with no student
    assert all(math.isfinite(x) for x in table.se["H6 (out of corpus)"])
    power = power_table(items=items, train_init="paper").frame
    row = power[(power["Items"] == "out of corpus") & (power["Comparison"] == "OPM + XKD-z - OPM + UT")].iloc[0]
    assert row["n"] == 200 and float(row["MDE (80% power)"]) == pytest.approx(mde(float(row["SE"])), abs=0.01)
    assert mde(1.0) == pytest.approx(2.8016, abs=1e-3)
    with pytest.raises(KeptError, match="no variant"):
        power_table(items=items[:1], train_init="paper")


def test_findings_judge_the_split_claims_and_name_the_regime_check(tmp_path):
    """The claims the split makes testable, and the regime check as an explanation of an XKD-versus-UT claim that
    does not hold (here: the regime holds, so it is not supported)."""
    from kept.report.findings import collect_findings, findings_markdown

    rng = np.random.default_rng(2)
    t = (rng.random(240) < 0.85).tolist()
    keep_in = [v and (i % 2 == 0 or rng.random() < 0.55) for i, v in enumerate(t)]  # forgets out-of-corpus items
    xkd_z = [v and rng.random() < 0.97 for v in t]
    xkd_h = [v and rng.random() < 0.5 for v in t]  # worse everywhere: XKD-h > UT disagrees
    opm = (rng.random(240) < 0.3).tolist()
    grid = {"teacher": t, "init-paper": opm, "ut": keep_in, "xkd_z": xkd_z, "xkd_h": xkd_h, CONTROL: keep_in,
            "ut+full": t, "xkd_h+full": xkd_z}
    items = [_h6(tmp_path, "base", m, {"ARC": x, "MMLU": x[2:] + x[:2]}) for m, x in grid.items()]
    items += [Item("base", "teacher", _mixture(tmp_path / "t.json", "teacher", [1.0 + 0.1 * (i % 3) for i in range(32)]),
                   "mixture"),
              Item("base", CONTROL, _mixture(tmp_path / "c.json", CONTROL, [1.2 + 0.1 * (i % 3) for i in range(32)]),
                   "mixture"),
              Item("base", CONTROL, _log(tmp_path / "c.jsonl", [1.0] * 6, 2048), "train"),
              Item("base", "teacher", _log(tmp_path / "b.jsonl", [0.5] * 50, 8192), "pretrain-base")]
    rows = {(r.claim, r.variant): r for r in collect_findings(items, train_init="paper", splits=True,
                                                              arm_explanations={"full": "coverage"})}
    keeps = rows[("XKD-z keeps out-of-corpus knowledge better than UT (H6, from OPM)", "base")]
    assert keeps.verdict == "agrees" and "on the out-of-corpus items" in keeps.toy
    assert rows[("UT forgets out-of-corpus knowledge (the teacher + UT)", "base")].verdict == "agrees"
    student = rows[("UT forgets out-of-corpus knowledge (OPM + UT)", "base")]
    assert student.verdict == "agrees" and "on the in-corpus items" in student.toy
    order = rows[("XKD-h > UT (H6)", "base")]
    assert order.verdict == "disagrees"
    regime = [x for x in order.tests if x.explanation == "regime"]
    assert len(regime) == 1 and regime[0].outcome == "not supported"  # the teacher is not still learning here
    assert "held-out mixture loss +0.2000" in regime[0].figure
    full = [x for x in order.tests if x.arm == "full corpus"]
    assert [x.explanation for x in full] == ["coverage"]  # the full-coverage arm tests the coverage explanation
    text = findings_markdown(list(rows.values()))
    assert "- **regime**: the teacher is still learning" in text
    # without the split (a run whose suites carry no corpus tag) the split's claims are left out
    plain = {r.claim for r in collect_findings(items, train_init="paper", splits=False)}
    assert not any("out-of-corpus" in c for c in plain)
