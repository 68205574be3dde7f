"""The lm-eval harness runner: the real lm-eval (no mock) on tiny Orion and Llama models with local tasks,
checked against an independent log-likelihood computation; few-shot settings, per-sample logs, group
micro/macro averages, errors; and the paper config's Open LLM Leaderboard v1 settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from eval_tiny import make_mc_task, make_student, make_teacher, make_tokenizer_model
from kept.errors import KeptError
from kept.eval.harness import HarnessConfig, RecoveryConfig, TaskSpec, run_harness, run_recovery

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    tok = make_tokenizer_model(d / "tok")
    make_mc_task(d / "tasks", "tiny_mc", n=12, n_dev=6, seed=0)
    make_mc_task(d / "tasks", "tiny_mc_b", n=5, n_dev=6, seed=1)
    (d / "tasks" / "tiny_group.yaml").write_text(
        "group: tiny_group\ntask:\n  - tiny_mc\n  - tiny_mc_b\naggregate_metric_list:\n"
        "  - metric: acc\n    weight_by_size: true\n"
    )
    return {
        "dir": d,
        "tasks": d / "tasks",
        "teacher": make_teacher(d / "teacher", tok),
        "student": make_student(d / "student", tok),
    }


def _cfg(world, tmp_path, model, tasks, **kw) -> HarnessConfig:
    return HarnessConfig(model=str(world[model]), output=str(tmp_path / "h6.json"), raw_dir=str(tmp_path / "h6"),
                         suite=kw.pop("suite", "h6"), tasks=tasks, model_name=model, variant="base",
                         task_dir=str(world["tasks"]), include_defaults=False, batch_size=4,
                         bootstrap_iters=0, **kw)


def _expected_acc(model_dir: Path, task_file: Path) -> float:
    """Zero-shot accuracy computed without lm-eval: argmax over choices of log p(" " + choice | question)."""
    from kept.models import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    correct = 0
    rows = [json.loads(line) for line in task_file.read_text().splitlines()]
    for r in rows:
        ctx = f"{r['question']}\nAnswer:"
        scores = []
        for choice in r["choices"]:
            whole, cenc = enc(ctx + " " + choice), enc(ctx)
            cont = whole[len(cenc):]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(float(logp[len(cenc) - 1 + i, t]) for i, t in enumerate(cont)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == r["label"])
    return correct / len(rows)


@pytest.mark.parametrize("model", ["teacher", "student"])
def test_real_lm_eval_matches_independent_loglikelihood(world, tmp_path, model):
    spec = TaskSpec(name="MC", task="tiny_mc", shots=0, metric="acc,none", chance=0.25)
    summary = run_harness(_cfg(world, tmp_path, model, [spec]))
    expected = _expected_acc(world[model], world["tasks"] / "tiny_mc.test.jsonl")
    col = summary["columns"][0]
    assert col["value"] == pytest.approx(expected, abs=1e-9)
    assert col["n"] == 12 and col["chance"] == 0.25 and col["shots"] == 0
    assert summary["average"] == pytest.approx(expected)
    assert summary["model"] == model and summary["suite"] == "h6"
    assert json.loads((tmp_path / "h6.json").read_text()) == summary


def test_shots_and_per_sample_logs(world, tmp_path):
    spec = TaskSpec(name="MC", task="tiny_mc", shots=3, metric="acc_norm,none", chance=0.25)
    summary = run_harness(_cfg(world, tmp_path, "teacher", [spec]))
    raw = json.loads((tmp_path / "h6" / "results.json").read_text())
    assert raw["n-shot"]["tiny_mc"] == 3
    samples = [json.loads(x) for x in (tmp_path / "h6" / "samples_tiny_mc.jsonl").read_text().splitlines()]
    assert len(samples) == 12
    # each request context holds 3 worked examples plus the question itself
    assert all(s["arguments"][0][0].count("\nAnswer:") == 4 for s in samples)
    value = sum(s["acc_norm"] for s in samples) / len(samples)
    assert summary["columns"][0]["value"] == pytest.approx(value)
    assert summary["columns"][0]["stderr"] is not None or raw["results"]["tiny_mc"]


def test_group_micro_and_macro_from_samples(world, tmp_path):
    spec = TaskSpec(name="KoMMLU", task="tiny_group", shots=1, metric="acc,none", chance=0.25)
    summary = run_harness(_cfg(world, tmp_path, "student", [spec], suite="kommlu", micro_macro=True))
    per_task = {}
    for name in ("tiny_mc", "tiny_mc_b"):
        rows = [json.loads(x) for x in (tmp_path / "h6" / f"samples_{name}.jsonl").read_text().splitlines()]
        per_task[name] = (sum(r["acc"] for r in rows) / len(rows), len(rows))
    macro = sum(v for v, _ in per_task.values()) / 2
    micro = sum(v * n for v, n in per_task.values()) / sum(n for _, n in per_task.values())
    assert summary["macro"] == pytest.approx(macro) and summary["micro"] == pytest.approx(micro)
    col = summary["columns"][0]
    assert col["value"] == pytest.approx(micro)  # lm-eval's own group aggregate is size-weighted
    assert col["subtasks"] == 2 and col["n"] == 17
    macro_spec = TaskSpec(name="K", task="tiny_group", shots=1, metric="acc,none", average="macro")
    again = run_harness(_cfg(world, tmp_path / "m", "student", [macro_spec]))
    assert again["columns"][0]["value"] == pytest.approx(macro)


def test_missing_metric_is_a_clear_error_and_writes_nothing(world, tmp_path):
    spec = TaskSpec(name="MC", task="tiny_mc", shots=0, metric="exact_match,strict-match")
    with pytest.raises(KeptError, match=r"tiny_mc.*exact_match,strict-match"):
        run_harness(_cfg(world, tmp_path, "teacher", [spec], limit=2))
    assert not (tmp_path / "h6.json").exists() and not (tmp_path / "h6").exists()


def test_unknown_task_and_bad_spec(world, tmp_path):
    with pytest.raises(KeptError, match="no_such_task"):
        run_harness(_cfg(world, tmp_path, "teacher", [TaskSpec(name="X", task="no_such_task", shots=0,
                                                               metric="acc,none")]))
    with pytest.raises(KeptError, match="shots"):
        TaskSpec.from_dict({"name": "X", "task": "t", "shots": -1, "metric": "acc,none"})
    with pytest.raises(KeptError, match="metric"):
        TaskSpec.from_dict({"name": "X", "task": "t", "shots": 0, "metric": "acc"})
    assert not (tmp_path / "h6.json").exists()


def test_recovery_evaluates_each_snapshot(world, tmp_path):
    snaps = tmp_path / "snapshots"
    for step, seed in ((10, 3), (20, 4)):
        make_student(snaps / f"step-{step}", Path(world["student"]) / "tokenizer.model", seed=seed)
    spec = TaskSpec(name="MC", task="tiny_mc", shots=0, metric="acc,none")
    out = run_recovery(RecoveryConfig(
        snapshots=str(snaps), outputs={10: str(tmp_path / "rec" / "step-10.json"),
                                       20: str(tmp_path / "rec" / "step-20.json")}, raw_dir=str(tmp_path / "raw"),
        tasks=[spec], method="xkd_z", variant="base",
        harness={"task_dir": str(world["tasks"]), "include_defaults": False, "batch_size": 4, "bootstrap_iters": 0},
    ))
    assert [s["step"] for s in out] == [10, 20]
    for step in (10, 20):
        s = json.loads((tmp_path / "rec" / f"step-{step}.json").read_text())
        assert s["model"] == "xkd_z" and s["method"] == "xkd_z" and s["step"] == step
        assert (tmp_path / "raw" / f"step-{step}" / "samples_tiny_mc.jsonl").is_file()
        assert s["columns"][0]["value"] == pytest.approx(
            _expected_acc(snaps / f"step-{step}", world["tasks"] / "tiny_mc.test.jsonl"))
    with pytest.raises(KeptError, match="step-30"):
        run_recovery(RecoveryConfig(snapshots=str(snaps), outputs={30: str(tmp_path / "x.json")},
                                    raw_dir=str(tmp_path / "raw30"), tasks=[spec]))


# ---- the paper config asks for exactly the Open LLM Leaderboard v1 settings ---------------------------------

LEADERBOARD_V1 = [
    ("arc_challenge", 25, "acc_norm,none"),
    ("hellaswag", 10, "acc_norm,none"),
    ("mmlu", 5, "acc,none"),
    ("truthfulqa_mc2", 0, "acc,none"),  # lm-eval 0.4 reports the mc2 score as "acc"
    ("winogrande", 5, "acc,none"),
    ("gsm8k", 5, "exact_match,strict-match"),
]


def _paper_eval() -> dict:
    return yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["eval"]


def test_paper_config_asks_for_exactly_the_leaderboard_settings():
    ev = _paper_eval()
    specs = [TaskSpec.from_dict(t) for t in ev["h6"]]
    assert [(s.task, s.shots, s.metric) for s in specs] == LEADERBOARD_V1
    assert [s.name for s in specs] == ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K"]
    kommlu = [TaskSpec.from_dict(t) for t in ev["kommlu"]]
    assert [(s.task, s.shots, s.metric) for s in kommlu] == [("kmmlu", 5, "acc,none")]
    h = ev["harness"]
    assert h["batch_size"] == "auto" and h["log_samples"] is True and h["limit"] is None
    assert h["tasks_from"] == "lm_eval"


def _load_lm_eval_yaml(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (SafeLoader subclass)


def test_paper_tasks_exist_in_lm_eval_with_those_metrics():
    """The task names, metrics and the gsm8k strict-match filter exist in the installed lm-eval's own YAMLs."""
    import lm_eval

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    found: dict[str, dict] = {}
    for path in tasks_root.glob("**/*.yaml"):
        if path.parts[-2] in {"arc", "hellaswag", "truthfulqa", "winogrande", "gsm8k", "mmlu", "default", "kmmlu"}:
            cfg = _load_lm_eval_yaml(path) or {}
            name = cfg.get("group") or cfg.get("task")
            if isinstance(name, str):
                found.setdefault(name, cfg)
    for task, _, metric in LEADERBOARD_V1 + [("kmmlu", 5, "acc,none")]:
        assert task in found, task
    metric_names = lambda cfg: {m["metric"] for m in cfg.get("metric_list", [])}  # noqa: E731
    assert "acc_norm" in metric_names(found["arc_challenge"]) | metric_names(
        _load_lm_eval_yaml(tasks_root / "arc" / "arc_easy.yaml"))
    assert "acc_norm" in metric_names(found["hellaswag"])
    # lm-eval 0.4 reports MC2 (normalised probability mass on the true answers) under the name "acc"
    assert metric_names(found["truthfulqa_mc2"]) == {"acc"}
    assert "process_results_mc2" in (tasks_root / "truthfulqa" / "truthfulqa_mc2.yaml").read_text()
    assert "acc" in metric_names(found["winogrande"])
    assert "exact_match" in metric_names(found["gsm8k"])
    assert "strict-match" in {f["name"] for f in found["gsm8k"]["filter_list"]}
