"""End-to-end training runs on a tiny random Orion teacher and its converted students."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kept.errors import KeptError
from kept.train import TrainConfig, train
from kept.train.data import PackedCorpus
from test_train_helpers import VOCAB, make_corpus, tiny_world  # noqa: F401  (fixture)


def _cfg(world, tmp_path, name, **kw):
    base = dict(corpus=str(world["corpus"]), output=str(tmp_path / name / "model"), work_dir=str(tmp_path / name),
                steps=12, batch_size=4, lr=3e-3, warmup_steps=2, log_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _log(work_dir) -> list[dict]:
    return [json.loads(line) for line in Path(work_dir, "train_log.jsonl").read_text().splitlines()]


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from kept.models import load_model

    return load_model(model_dir).state_dict()


@pytest.mark.parametrize("objective,exact_tol", [("xkd_h", 1e-9), ("xkd_z", 1e-6)])
def test_objectives_agree_with_the_mapping(tiny_world, tmp_path, objective, exact_tol):
    """exact student: loss ~0 at the initial weights; paper (OPM) student: clearly above 0 and falling."""
    teacher = str(tiny_world["teacher"])
    exact = train(_cfg(tiny_world, tmp_path, "exact", objective=objective, steps=1,
                       student=str(tiny_world["students"]["exact"]), teacher=teacher))
    assert abs(exact["first_logged_loss"]) < exact_tol
    paper = train(_cfg(tiny_world, tmp_path, "paper", objective=objective,
                       student=str(tiny_world["students"]["paper"]), teacher=teacher))
    log = _log(tmp_path / "paper")
    assert log[0]["step"] == 1 and log[-1]["step"] == 12
    assert log[0]["loss"] > 0.1
    assert paper["final_loss"] < 0.6 * log[0]["loss"]
    metric = {"xkd_h": "mse", "xkd_z": "kl"}[objective]
    assert {"loss", metric, "lr", "tokens", "tokens_per_s", "elapsed_s"} <= set(log[0])


def test_export_is_stock_llama_with_tokenizer_and_snapshots(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    student = tiny_world["students"]["paper"]
    cfg = _cfg(tiny_world, tmp_path, "ut", objective="ut", student=str(student), snapshot_every=4)
    summary = train(cfg)
    out = Path(cfg.output)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    for name in ("conversion.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (student / name).read_bytes()
    assert any(p.name.startswith("tokenizer") and p.suffix in (".json", ".model") for p in out.iterdir())
    assert sorted(p.name for p in (tmp_path / "ut" / "snapshots").iterdir()) == ["step-12", "step-4", "step-8"]
    snap4 = AutoModelForCausalLM.from_pretrained(tmp_path / "ut" / "snapshots" / "step-4", trust_remote_code=False)
    final = model.state_dict()
    assert any(not torch.equal(v, final[k]) for k, v in snap4.state_dict().items())  # a real intermediate state
    assert summary["tokens"] == 12 * 4 * 16
    assert not (tmp_path / "ut" / "resume").exists()  # resume state is dropped after success
    # every export carries a model card: the recipe, the budget and the init's fidelity
    card = (out / "README.md").read_text()
    assert "This is the trained model" in card and "768 training tokens" in card and "| kl_mean |" in card
    snap_card = (tmp_path / "ut" / "snapshots" / "step-4" / "README.md").read_text()
    assert "a training snapshot at step 4 of 12" in snap_card and "-ut-step4" in snap_card


def test_long_jobs_log_progress(tiny_world, tmp_path, monkeypatch, caplog):
    """Training and the teacher cache write step/item counts, throughput and ETA lines to the log (every
    update here: the interval is 0 instead of 30 s)."""
    from kept import progress
    from kept.train.cache import CacheConfig, cache_teacher

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="kept.progress")
    teacher, student = str(tiny_world["teacher"]), str(tiny_world["students"]["paper"])
    train(_cfg(tiny_world, tmp_path, "p", objective="xkd_z", student=student, teacher=teacher, steps=3,
               progress=True))
    cache_teacher(CacheConfig(teacher=teacher, corpus=str(tiny_world["corpus"]), output=str(tmp_path / "c"),
                              top_k=4, batch_size=4))
    got = [r.getMessage() for r in caplog.records if r.name == "kept.progress"]
    steps = [g for g in got if g.startswith("xkd_z: ")]
    assert [g.split()[1] for g in steps] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"step/s, [\d.]+k? tok/s \| elapsed", g) for g in steps) and "ETA" in steps[0]
    assert "loss=" in steps[-1]  # the latest logged loss rides along
    cached = [g for g in got if g.startswith("cache-teacher: ")]
    n = len(PackedCorpus(tiny_world["corpus"]))
    assert cached and cached[-1].startswith(f"cache-teacher: {n}/{n} seq (100%)") and "tok/s" in cached[-1]


def test_ut_pretrains_an_orion_teacher(tiny_world, tmp_path):
    """The toy-world path: an Orion student trained with UT and written back in Orion format."""
    from kept.models import load_model

    cfg = _cfg(tiny_world, tmp_path, "pre", objective="ut", student=str(tiny_world["teacher"]),
               export_format="orion", steps=20, lr=1e-2)
    summary = train(cfg)
    assert summary["final_loss"] < _log(tmp_path / "pre")[0]["loss"]
    out = Path(cfg.output)
    assert json.loads((out / "config.json").read_text())["model_type"] == "orion"
    assert (out / "tokenizer.model").read_bytes() == (tiny_world["teacher"] / "tokenizer.model").read_bytes()
    model = load_model(out)
    before = load_model(tiny_world["teacher"]).state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_offline_cache_with_full_vocabulary_reproduces_online(tiny_world, tmp_path):
    """Tolerance: the final weights of the two runs agree within 1e-5 (float32, 12 AdamW steps)."""
    from kept.train.cache import CacheConfig, cache_teacher

    teacher, student = str(tiny_world["teacher"]), str(tiny_world["students"]["paper"])
    cache = tmp_path / "cache"
    manifest = cache_teacher(CacheConfig(teacher=teacher, corpus=str(tiny_world["corpus"]), output=str(cache),
                                         top_k=VOCAB, logprob_dtype="float32", progress=False))
    assert manifest["top_k"] == VOCAB
    online = train(_cfg(tiny_world, tmp_path, "online", objective="xkd_z", student=student, teacher=teacher))
    offline = train(_cfg(tiny_world, tmp_path, "offline", objective="xkd_z", student=student,
                         teacher_cache=str(cache)))
    for a, b in zip(_log(tmp_path / "online"), _log(tmp_path / "offline")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    wa, wb = _weights(tmp_path / "online" / "model"), _weights(tmp_path / "offline" / "model")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert online["final_loss"] < online["first_logged_loss"]
    # a small k trains on a coarser target: a different trajectory
    small = tmp_path / "cache8"
    cache_teacher(CacheConfig(teacher=teacher, corpus=str(tiny_world["corpus"]), output=str(small), top_k=8,
                              progress=False))
    train(_cfg(tiny_world, tmp_path, "k8", objective="xkd_z", student=student, teacher_cache=str(small)))
    assert _log(tmp_path / "k8")[0]["loss"] < _log(tmp_path / "online")[0]["loss"]
    # the cache is tied to its corpus and temperature
    with pytest.raises(KeptError, match="temperature"):
        train(_cfg(tiny_world, tmp_path, "badT", objective="xkd_z", student=student, teacher_cache=str(cache),
                   temperature=2.0))
    assert not (tmp_path / "badT" / "model").exists()


def _child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env


def test_resume_after_sigkill_gives_the_uninterrupted_weights(tiny_world, tmp_path):
    common = dict(objective="xkd_z", student=str(tiny_world["students"]["paper"]), teacher=str(tiny_world["teacher"]),
                  steps=150, batch_size=2, lr=1e-3, warmup_steps=5, log_every=10, save_state_every=10,
                  snapshot_every=50)
    killed = _cfg(tiny_world, tmp_path, "killed", **common)
    cfg_file = tmp_path / "killed.json"
    cfg_file.write_text(json.dumps(killed.to_dict()))
    cmd = [sys.executable, "-m", "kept.cli", "train", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = tmp_path / "killed" / "resume"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(p.name.startswith("step-") for p in resume.glob("step-*")):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not Path(killed.output).exists()  # no output that looks complete
    states = sorted(int(p.name.split("-")[1]) for p in resume.glob("step-*"))
    assert states and states[-1] < 150

    resumed = train(_cfg(tiny_world, tmp_path, "killed", **common))
    assert resumed["resumed_from"] >= 10
    reference = train(_cfg(tiny_world, tmp_path, "straight", **common))
    assert reference["resumed_from"] == 0
    wa, wb = _weights(killed.output), _weights(reference["output"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6
    log_a, log_b = _log(tmp_path / "killed"), _log(tmp_path / "straight")
    assert [e["step"] for e in log_a] == [e["step"] for e in log_b]
    assert [e["loss"] for e in log_a] == pytest.approx([e["loss"] for e in log_b], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "killed" / "snapshots").iterdir()) == ["step-100", "step-150",
                                                                                      "step-50"]


def test_resume_state_of_other_settings_is_not_used(tiny_world, tmp_path):
    common = dict(objective="ut", student=str(tiny_world["students"]["paper"]), steps=6, save_state_every=2,
                  keep_resume=True)
    train(_cfg(tiny_world, tmp_path, "run", **common))
    assert (tmp_path / "run" / "resume" / "step-6").is_dir()
    again = train(_cfg(tiny_world, tmp_path, "run", **{**common, "steps": 8}))
    assert again["resumed_from"] == 0  # a different budget is a different trajectory
    same = train(_cfg(tiny_world, tmp_path, "run", **{**common, "steps": 8}))
    assert same["resumed_from"] == 8


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tiny_world, tmp_path):
    """torchrun, 2 processes, gloo: same entry point, same global batch -> same weights as one process."""
    from kept.train.launch import launch

    common = dict(objective="xkd_z", student=str(tiny_world["students"]["paper"]), teacher=str(tiny_world["teacher"]),
                  steps=4, lr=1e-3)
    ddp = launch(_cfg(tiny_world, tmp_path, "ddp", batch_size=2, **common), launcher="torchrun", num_processes=2,
                 log_file=str(tmp_path / "ddp.log"))
    assert ddp["world_size"] == 2, (tmp_path / "ddp.log").read_text()[-2000:]
    one = train(_cfg(tiny_world, tmp_path, "one", batch_size=4, **common))
    assert ddp["tokens"] == one["tokens"]
    wa, wb = _weights(tmp_path / "ddp" / "model"), _weights(tmp_path / "one" / "model")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_pilot_norm_weights_move_toward_gamma(tiny_world, tmp_path):
    from kept.train.pilot import PilotConfig, run_pilot

    out = tmp_path / "pilot" / "cosine.jsonl"
    summary = run_pilot(PilotConfig(student=str(tiny_world["students"]["paper"]), teacher=str(tiny_world["teacher"]),
                                    corpus=str(tiny_world["corpus"]), output=str(out), work_dir=str(tmp_path / "pilot"),
                                    objective="xkd_h", steps=150, lr=0.1, batch_size=4, log_every=50,
                                    init_mean=0.0, init_std=1.0, progress=False))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 150
    assert len(rows[0]["cos"]) == 4  # 2 layers x 2 sites (the final norm gets no XKD-h signal)
    assert abs(rows[0]["cos_mean"]) < 0.5  # random start
    assert rows[-1]["cos_mean"] > 0.9 and min(rows[-1]["cos"]) > 0.8
    assert summary["cos_mean_end"] == rows[-1]["cos_mean"]


def test_bad_inputs_fail_clearly_and_leave_nothing(tiny_world, tmp_path):
    from kept.errors import ConfigError

    student = str(tiny_world["students"]["paper"])
    with pytest.raises(ConfigError, match="teacher"):
        _cfg(tiny_world, tmp_path, "x", objective="xkd_z", student=student)
    with pytest.raises(ConfigError, match="lr"):
        _cfg(tiny_world, tmp_path, "x", objective="ut", student=student, lr=0.0)
    big = make_corpus(tmp_path / "bigvocab", vocab=VOCAB + 50)
    with pytest.raises(KeptError, match="vocab_size"):
        train(_cfg(tiny_world, tmp_path, "v", objective="ut", student=student, corpus=str(big)))
    with pytest.raises(KeptError, match="manifest.json"):
        train(_cfg(tiny_world, tmp_path, "m", objective="ut", student=student, corpus=str(tmp_path / "nowhere")))
    with pytest.raises(KeptError, match="export_format"):
        train(_cfg(tiny_world, tmp_path, "f", objective="ut", student=student, export_format="orion"))
    for name in ("v", "m", "f"):
        assert not (tmp_path / name / "model").exists()
