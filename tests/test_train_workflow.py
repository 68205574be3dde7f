"""Training through Snakemake: a job killed mid-run leaves no output that looks complete, and the rerun resumes
from the state under {variant}/{method}/resume/ (not a declared output, so Snakemake keeps it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_train_helpers import make_corpus, make_orion, make_tokenizer
from test_workflow import ENV, SNAKEMAKE, copy_workflow


@pytest.mark.slow
def test_killed_training_job_resumes_on_rerun(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    copy_workflow(wd)
    results = tmp_path / "results"
    teacher = make_orion(tmp_path / "teacher", make_tokenizer(tmp_path / "tokenizer.model"))
    make_corpus(results / "corpus", n=16, length=16)
    cfg = {
        "results": str(results),
        # every variant local (the merged configs keep chat/longchat/neox): no toy world is built
        "variants": {v: {"source": {"kind": "local", "path": str(teacher)}}
                     for v in ("base", "chat", "longchat", "neox")},
        "convert": {"norms": ["paper"]},
        "train": {"steps": 150, "batch_size": 2, "snapshot_every": 50, "save_state_every": 10,
                  "common": {"lr": 1e-3, "log_every": 10}, "pilot": {"variants": []},
                  "fast": {"variants": []}},  # the smoke config's fast path starts from init-exact, not converted here
    }
    (wd / "train_test.yaml").write_text(yaml.safe_dump(cfg))
    work = results / "base" / "xkd_z"
    cmd = [SNAKEMAKE, str(work / "model"), "--cores", "1", "--allowed-rules", "convert", "train",
           "--configfile", "config/smoke.yaml", "train_test.yaml"]

    first_log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen(cmd, cwd=wd, env=ENV, stdout=first_log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((work / "resume").glob("step-*")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, ("the workflow finished before it could be killed:\n"
                                     + (tmp_path / "first_run.log").read_text()[-3000:])
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, at once
    finally:
        proc.wait()
        first_log.close()
    time.sleep(0.5)
    assert not (work / "model").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (work / "resume").glob("step-*"))
    assert saved and saved[-1] < 150

    unlock = subprocess.run(cmd + ["--unlock"], cwd=wd, env=ENV, capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-2000:]  # the kill left Snakemake's lock behind
    rerun = subprocess.run(cmd + ["--rerun-incomplete"], cwd=wd, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["resumed_from"] >= saved[-1] > 0
    steps = [json.loads(line)["step"] for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1] + list(range(10, 151, 10))  # the log is whole: restored part + resumed part
    assert sorted(p.name for p in (work / "snapshots").glob("step-*")) == ["step-100", "step-150", "step-50"]
    assert (work / "model" / "config.json").is_file()
    assert not (work / "resume").exists()
