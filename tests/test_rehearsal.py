"""The width-faithful rehearsal (bench/bench_rehearsal.py): the command the GPU machine runs
(bench/rehearsal_gpu.sh), here at a tiny width on the CPU through every launcher that works on a CPU: none,
torchrun (gloo) and accelerate with the DeepSpeed ZeRO-2 / ZeRO-3 offload profiles (DeepSpeed's CPU accelerator;
skipped without deepspeed, a GPU-only dependency). accelerate's FSDP profile does not run on a CPU (accelerate
1.15 raises "no available devices" for FSDP without an accelerator) and its single_gpu profile is the plain
path of launcher none on a CPU. The figures of a CPU run mean nothing; the tests check the path: jobs built from
config/paper.yaml's settings, exports, the kill-and-resume job, the fit and the written result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.bench_rehearsal import FULL_DEPTH, fit_depth, main, plan, record
from kept.train.config import method_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--width", "tiny", "--steps", "12", "--snapshot-every", "6", "--save-state-every", "2", "--budget-s", "1800"]


def _result(out: Path) -> dict:
    res = json.loads((out / "rehearsal.json").read_text())
    assert not res["errors"], res["errors"]
    assert (out / "rehearsal.md").read_text().startswith("## Rehearsal")
    assert not list((out / "work").glob("*")), "models and runs are deleted as the rehearsal goes"
    return res


def _check_resume(res: dict) -> None:
    resumed = [r for r in res["rows"] if r["job"].endswith("-resume")]
    assert len(resumed) == 1
    assert resumed[0]["killed_at_state"] == 2 and resumed[0]["resumed_from"] == 2


@pytest.mark.slow
def test_rehearsal_on_cpu_through_launcher_none(tmp_path):
    out = tmp_path / "out"
    code = main([*TINY, "--depths", "1", "2", "--objectives", "xkd_h", "pilot", "--launchers", "none",
                 "--out-dir", str(out)])
    res = _result(out)
    assert code == 0
    jobs = {r["job"] for r in res["rows"]}
    assert jobs == {"xkd_h-d1-none", "xkd_h-d2-none", "xkd_h-d1-none-resume", "pilot-d1-none", "pilot-d2-none"}
    assert all(r["peak_host_gib"] > 0 and r["s_per_step"] > 0 for r in res["rows"])
    # the jobs ran with the paper config's settings (bf16 weights, bf16 autocast, checkpointing, chunked loss)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    want = method_settings(paper["train"], "xkd_h", seed=paper["seed"])
    for key, value in res["train_settings"]["xkd_h"].items():
        assert value == want[key], key
    assert res["train_settings"]["pilot"]["gradient_checkpointing"] is True
    _check_resume(res)
    fits = {(f["objective"], f["launcher"]): f for f in res["fits"]}
    assert set(fits) == {("xkd_h", "none"), ("pilot", "none")}
    assert fits[("xkd_h", "none")]["depths"] == [1, 2] and fits[("xkd_h", "none")]["peak_host_gib"]["at_40"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("launcher,ran_as", [("torchrun", "MULTI_CPU"),
                                             ("accelerate:deepspeed_zero2_offload", "DEEPSPEED ZeRO-2")])
def test_rehearsal_on_cpu_through_a_launcher(tmp_path, launcher, ran_as):
    if launcher.startswith("accelerate:deepspeed"):
        pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    code = main([*TINY, "--depths", "1", "--objectives", "xkd_z", "--out-dir", str(out), "--launchers", launcher])
    res = _result(out)
    assert code == 0
    name = f"xkd_z-d1-{launcher.replace(':', '-')}"
    assert {r["job"]: r["ran_as"] for r in res["rows"]} == {name: ran_as, f"{name}-resume": ran_as}
    _check_resume(res)


def test_fit_extrapolates_a_line_in_depth_and_leaves_resumed_jobs_out():
    rows = [{"objective": "xkd_h", "launcher": "l", "depth": d, "resumed_from": 0, "peak_gpu_reserved_gib": 30 + 1.0 * d,
             "peak_gpu_alloc_gib": 29 + 1.0 * d, "peak_host_gib": 10 + 5 * d, "s_per_step": 0.5 + 0.25 * d}
            for d in (2, 4, 8)]
    rows.append({**rows[0], "resumed_from": 2, "killed_at_state": 2, "peak_host_gib": 999.0})
    (fit,) = fit_depth(rows)
    assert fit["depths"] == [2, 4, 8]
    assert fit["peak_gpu_reserved_gib"]["at_40"] == pytest.approx(30 + 1.0 * FULL_DEPTH)
    assert fit["peak_host_gib"]["per_layer"] == pytest.approx(5.0)
    assert fit["s_per_step"]["at_40"] == pytest.approx(10.5)
    assert fit["fits_80gb"] is True
    rows = [{**r, "peak_gpu_reserved_gib": 30 + 2 * r["depth"]} for r in rows]
    assert fit_depth(rows)[0]["fits_80gb"] is False  # 110 GiB at 40 layers
    assert fit_depth(rows[:1]) == []  # one depth: no line


def test_plan_puts_the_resume_job_after_the_first_sweep_and_runs_the_pilot_once():
    jobs = plan(["xkd_h", "pilot", "ut"], [2, 4], [("accelerate", "p"), ("torchrun", None)], resume=True)
    names = [j.name for j in jobs]
    assert names[:5] == ["xkd_h-d2-accelerate-p", "xkd_h-d4-accelerate-p", "xkd_h-d2-torchrun", "xkd_h-d4-torchrun",
                         "xkd_h-d2-accelerate-p-resume"]
    assert [j.name for j in jobs if j.objective == "pilot"] == ["pilot-d2-accelerate-p", "pilot-d4-accelerate-p"]
    assert sum(j.resume for j in jobs) == 1


def test_budget_skips_jobs_and_says_so(tmp_path):
    code = main(["--width", "tiny", "--depths", "1", "--objectives", "ut", "--launchers", "none", "--budget-s", "0",
                 "--out-dir", str(tmp_path)])
    res = json.loads((tmp_path / "rehearsal.json").read_text())
    assert code == 0 and not res["rows"]
    assert [s["job"] for s in res["skipped"]] == ["ut-d1-none", "ut-d1-none-resume"]
    assert "Skipped for time: ut-d1-none, ut-d1-none-resume" in (tmp_path / "rehearsal.md").read_text()


def test_record_refuses_a_cpu_result_and_writes_a_gpu_one_between_markers(tmp_path):
    result = {"title": "Rehearsal: x", "device": "cpu (x86_64)", "rows": [], "fits": [], "skipped": [], "errors": [],
              "torch": "t", "versions": {}, "width": "orion-14b", "widths": {}, "max_length": 4096, "steps": 4,
              "snapshot_every": 2, "budget_s": 1, "config_launcher": {}, "train_settings": {}}
    path = tmp_path / "rehearsal.json"
    path.write_text(json.dumps(result))
    results_md, plan_md = tmp_path / "results.md", tmp_path / "plan.md"
    results_md.write_text("# Benchmark results\n\nheader\n\n<!-- bench:kl -->\n## KL\n\nbody\n")
    plan_md.write_text("# Plan\n\n<!-- rehearsal:begin -->\nnot run yet\n<!-- rehearsal:end -->\n\nafter\n")
    with pytest.raises(SystemExit, match="not on a GPU"):
        record(path, results_md=results_md, memory_plan=plan_md)
    path.write_text(json.dumps({**result, "device": "NVIDIA H200", "rows": [
        {"objective": "xkd_h", "depth": 2, "launcher": "l", "peak_gpu_reserved_gib": 40.5, "resumed_from": 0}]}))
    record(path, results_md=results_md, memory_plan=plan_md)
    doc = plan_md.read_text()
    assert "not run yet" not in doc and "| xkd_h | 2 | l |" in doc and doc.endswith("after\n")
    text = results_md.read_text()
    assert text.startswith("# Benchmark results\n\nheader") and "## KL" in text and "<!-- bench:rehearsal -->" in text
