"""Stop at parity (kept.train.parity): a run ends once the held-out KL to the teacher reaches its target, records
why and when, never trains on the held-out tail, and resumes to the same stop after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kept.errors import ConfigError
from kept.train import TrainConfig
from kept.train.data import BatchSchedule
from kept.train.parity import heldout_indices, parity_target
from kept.train.trainer import fit, train
from test_train_helpers import tiny_world  # noqa: F401  (fixture)
from test_train_run import _log, _weights

CEILING = 40


def _cfg(world, tmp_path, name, **kw):
    base = dict(objective="xkd_z", student=str(world["students"]["paper"]), teacher=str(world["teacher"]),
                corpus=str(world["corpus"]), output=str(tmp_path / name / "model"), work_dir=str(tmp_path / name),
                steps=CEILING, batch_size=4, lr=3e-3, warmup_steps=2, log_every=100, progress=False,
                stop_every=2, stop_kl_share=0.65, stop_sequences=4)
    base.update(kw)
    return TrainConfig(**base)


def test_run_stops_at_the_first_check_that_reaches_the_target(tiny_world, tmp_path):
    summary = train(_cfg(tiny_world, tmp_path, "fast", snapshot_every=4))
    stop = summary["stop"]
    # ignoring the criterion runs to the ceiling: this is what fails then
    assert stop["reason"] == "parity" and summary["steps"] == stop["step"] < CEILING
    assert stop["target"] == pytest.approx(0.65 * stop["kl_before"]) and stop["kl_before"] > 0
    checks = stop["checks"]
    assert [s for s, _ in checks] == list(range(2, stop["step"] + 1, 2))  # every stop_every steps, until the stop
    assert all(kl > stop["target"] for _, kl in checks[:-1]) and checks[-1][1] <= stop["target"]
    log = _log(tmp_path / "fast")
    assert log[-1]["step"] == stop["step"] and log[-1]["heldout_kl"] == checks[-1][1]
    assert summary["tokens"] == stop["step"] * 4 * 16 and summary["tokens_ceiling"] == CEILING * 4 * 16
    # the export says how far it went; snapshots exist only up to the stop
    training = json.loads((tmp_path / "fast" / "model" / "training.json").read_text())
    assert training["steps"] == stop["step"] and training["summary"]["stop"]["reason"] == "parity"
    card = (tmp_path / "fast" / "model" / "README.md").read_text()
    assert f"Stopped at step {stop['step']} of a {CEILING}-step ceiling" in card and "reached its target" in card
    snaps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "fast" / "snapshots").iterdir())
    assert snaps == list(range(4, stop["step"] + 1, 4))
    assert not (tmp_path / "fast" / "resume").exists()


def test_unreachable_target_runs_to_the_ceiling_and_says_so(tiny_world, tmp_path):
    summary = train(_cfg(tiny_world, tmp_path, "ceil", steps=6, stop_kl_share=None, stop_kl=0.0))
    assert summary["stop"]["reason"] == "ceiling" and summary["steps"] == 6
    assert [s for s, _ in summary["stop"]["checks"]] == [2, 4, 6]


def test_resume_after_an_interruption_before_the_stop_gives_the_same_stop(tiny_world, tmp_path):
    straight = train(_cfg(tiny_world, tmp_path, "straight", save_state_every=2))
    stop_step = straight["stop"]["step"]
    assert stop_step >= 6, "the interruption below must come before the stop"

    class Interrupted(Exception):
        pass

    def interrupt(step, _student):
        if step == 5:
            raise Interrupted

    cfg = _cfg(tiny_world, tmp_path, "killed", save_state_every=2, log_every=1)
    with pytest.raises(Interrupted):
        fit(cfg, on_log=interrupt)
    assert not Path(cfg.output).exists()
    state = json.loads((tmp_path / "killed" / "resume" / "step-4" / "trainer_state.json").read_text())
    assert state["stop_kl0"] == pytest.approx(straight["stop"]["kl_before"]) and state["stopped_at"] is None

    resumed = train(_cfg(tiny_world, tmp_path, "killed", save_state_every=2, log_every=1))
    assert resumed["resumed_from"] == 4
    assert resumed["stop"]["step"] == stop_step and resumed["stop"]["reason"] == "parity"
    assert resumed["stop"]["kl_before"] == pytest.approx(straight["stop"]["kl_before"])
    assert [s for s, _ in resumed["stop"]["checks"]] == [s for s, _ in straight["stop"]["checks"]]
    wa, wb = _weights(cfg.output), _weights(straight["output"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_a_kept_state_of_a_stopped_run_is_not_trained_further(tiny_world, tmp_path):
    first = train(_cfg(tiny_world, tmp_path, "keep", keep_resume=True))
    again = train(_cfg(tiny_world, tmp_path, "keep", keep_resume=True))
    assert again["resumed_from"] == first["steps"] == again["steps"] < CEILING
    assert again["stop"]["reason"] == "parity"


def test_held_out_tail_is_never_served():
    corpus = type("C", (), {"__len__": lambda self: 20})()
    held = heldout_indices(20, 5, where="c")
    assert held.tolist() == [15, 16, 17, 18, 19]
    sched = BatchSchedule(corpus, seed=0, batch_size=4, grad_accum=1, limit=int(held[0]))
    served = np.concatenate([sched.indices(s, 0) for s in range(50)])
    assert served.max() < 15 and set(served.tolist()) == set(range(15))
    with pytest.raises(ConfigError, match="stop_sequences"):
        heldout_indices(5, 5, where="c")


def test_targets_and_bad_settings(tiny_world, tmp_path):
    assert parity_target(_cfg(tiny_world, tmp_path, "a", stop_kl=0.1, stop_kl_share=0.5), 1.0) == 0.5
    assert parity_target(_cfg(tiny_world, tmp_path, "a", stop_kl=0.1, stop_kl_share=0.05), 1.0) == 0.1
    with pytest.raises(ConfigError, match="stop_every"):
        _cfg(tiny_world, tmp_path, "b", stop_kl_share=None)
    with pytest.raises(ConfigError, match="stop_kl_share"):
        _cfg(tiny_world, tmp_path, "b", stop_kl_share=1.5)
    with pytest.raises(ConfigError, match="stop_every"):
        TrainConfig(objective="ut", student="s", corpus="c", output="o", work_dir="w", stop_every=5, stop_kl=0.1)
    # a run without the check hashes as before the stop keys existed; the held-out tail changes the trajectory
    plain = _cfg(tiny_world, tmp_path, "c", stop_every=0)
    assert plain.fingerprint() == _cfg(tiny_world, tmp_path, "c", stop_every=0, stop_sequences=9).fingerprint()
    assert plain.fingerprint() != _cfg(tiny_world, tmp_path, "c").fingerprint()
    assert _cfg(tiny_world, tmp_path, "c").fingerprint() == _cfg(tiny_world, tmp_path, "c", stop_kl_share=0.3).fingerprint()


def test_tokens_to_parity_interval_over_seeds():
    from kept.train.parity import first_reaching, format_interval, seed_interval

    assert first_reaching({0: 0.5, 20: 0.69, 40: 0.7, 60: 0.71}, 0.695) == 40
    assert first_reaching({0: 0.5, 20: 0.6}, 0.695) is None
    s = seed_interval([2048, 4096, 6144], ceiling=10_000)
    assert s["mean"] == 4096 and s["censored"] == 0
    # sd 2048, n 3: half-width t(0.975, 2) * 2048 / sqrt(3) = 4.303 * 1182.4
    assert s["hi"] - s["mean"] == pytest.approx(4.303 * 2048 / 3**0.5, rel=1e-6)
    assert format_interval(s) == "4096 [0, 9184] (3 seeds)"
    censored = seed_interval([2048, None], ceiling=8192)
    assert censored["mean"] == 5120 and censored["censored"] == 1
    assert format_interval(censored).startswith(">= 5120 [") and "1 never reached" in format_interval(censored)
    one = seed_interval([4096], ceiling=8192)
    assert format_interval(one) == "4096 (1 seed)"
    with pytest.raises(ValueError):
        seed_interval([], ceiling=1)
