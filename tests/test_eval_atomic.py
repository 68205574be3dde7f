"""Atomic evaluation outputs (issue 8, item 3): a crash or a kill during an evaluation never leaves an output
that looks complete; running again produces the complete output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval_tiny import make_mc_task, make_teacher, make_tokenizer_model, write_prompts, write_questions
from kept.eval import harness
from kept.eval.harness import HarnessConfig, TaskSpec, run_harness
from test_judge_client import FakeOpenAI, _answer_file

KEPT = str(Path(sys.executable).with_name("kept"))


def test_crash_between_raw_results_and_summary_leaves_no_summary(tmp_path, monkeypatch):
    tok = make_tokenizer_model(tmp_path / "tok")
    teacher = make_teacher(tmp_path / "teacher", tok)
    make_mc_task(tmp_path / "tasks", "tiny_mc", n=6, n_dev=4)
    cfg = HarnessConfig(model=str(teacher), output=str(tmp_path / "out" / "h6.json"),
                        raw_dir=str(tmp_path / "out" / "h6"), suite="h6",
                        tasks=[TaskSpec(name="MC", task="tiny_mc", shots=1, metric="acc,none")],
                        task_dir=str(tmp_path / "tasks"), include_defaults=False, batch_size=4, bootstrap_iters=0)

    def crash(path, obj):
        raise KeyboardInterrupt("killed while writing the summary")

    monkeypatch.setattr(harness, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        run_harness(cfg)
    assert not Path(cfg.output).exists()  # the summary (the file downstream rules read) is absent
    assert not list((tmp_path / "out").glob(".tmp-*"))
    monkeypatch.undo()
    summary = run_harness(cfg)  # a rerun redoes it and replaces the raw directory
    assert json.loads(Path(cfg.output).read_text()) == summary
    assert (Path(cfg.raw_dir) / "results.json").is_file()


def test_killed_judge_leaves_no_judgment_file_and_rerun_completes(tmp_path):
    questions = write_questions(tmp_path / "question.jsonl")
    prompts = write_prompts(tmp_path / "judge_prompts.jsonl")
    answers = _answer_file(tmp_path / "model_answer" / "m-orion.jsonl", model_id="m-orion")
    out = tmp_path / "judgments" / "m-orion.jsonl"
    summary = tmp_path / "mtbench-orion.json"
    cmd = [KEPT, "mtbench-judge", "--answers", str(answers), "--questions", str(questions), "--output", str(out),
           "--prompts", str(prompts), "--backend", "openai", "--judge-model", "judge", "--api-key-env",
           "KEPT_TEST_KEY", "--parallel", "1", "--summary", str(summary)]
    env = {**os.environ, "KEPT_TEST_KEY": "sk-test"}
    with FakeOpenAI(default=("sleep", 0.3, "ok [[6]]")) as srv:
        proc = subprocess.Popen(cmd + ["--base-url", srv.url], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(srv.requests) < 3 and time.time() < deadline:  # judging is under way
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 3 <= len(srv.requests) < 16
        assert not out.exists() and not summary.exists()
        assert not out.parent.exists() or not [p for p in out.parent.iterdir() if not p.name.startswith(".tmp-")]
        srv.default = ("ok", "fine [[6]]")
        done = subprocess.run(cmd + ["--base-url", srv.url], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 16 and all(r["score"] == 6 for r in rows)
    assert json.loads(summary.read_text())["average"] == 6
