"""The fast path in the DAG (dry runs): config/fast.yaml trains only the stop-at-parity students from the exact
mapping and evaluates only them; the toy default adds one such student per train.fast variant, kept out of the
recovery curves, with the fast-path table."""

from __future__ import annotations

import pytest

from test_workflow import ok, parse_jobs, snakemake, workflow_copy  # noqa: F401  (fixture)


def _jobs(wd, *args):
    return parse_jobs(ok(snakemake("-n", "--cores", "2", *args, cwd=wd)))


@pytest.mark.slow
def test_fast_config_trains_and_evaluates_only_the_fast_path(workflow_copy):
    jobs = _jobs(workflow_copy, "--configfile", "config/fast.yaml")
    rules = {j["rule"] for j in jobs}
    trains = {(j["wildcards"]["variant"], j["wildcards"]["method"]) for j in jobs if j["rule"] == "train"}
    assert trains == {(v, "xkd_z-parity") for v in ("base", "chat", "longchat")}
    assert {j["wildcards"]["init"] for j in jobs if j["rule"] == "convert"} == {"exact"}
    assert not rules & {"eval_recovery", "pilot", "report_figure_recovery"}
    assert {"report_table_fast_path", "report_table_h6", "report_table_mtbench", "model_card"} <= rules
    evaluated = {j["wildcards"]["model"] for j in jobs if "model" in j["wildcards"]}
    assert evaluated == {"xkd_z-parity"}  # the final models only: no teacher, no init, no grid


@pytest.mark.slow
def test_default_config_adds_one_fast_student_per_fast_variant(workflow_copy):
    jobs = _jobs(workflow_copy)
    fast = "xkd_z@exact-parity"
    trains = {j["wildcards"]["variant"] for j in jobs if j["rule"] == "train" and j["wildcards"]["method"] == fast}
    assert trains == {"base", "chat"}
    recovery = {j["wildcards"].get("method") for j in jobs if j["rule"] == "eval_recovery"}
    assert recovery and fast not in recovery  # it stops early: no static set of snapshots to evaluate
    by_rule = {}
    for j in jobs:
        if fast in j["wildcards"].get("model", "") + j["wildcards"].get("method", ""):
            by_rule[j["rule"]] = by_rule.get(j["rule"], 0) + 1
    # its row needs H6 and MT-Bench only (both formats judged), plus its card: nothing of code, KoMMLU, long context
    assert by_rule == {"train": 2, "eval_harness": 2, "mtbench_answer_student": 2, "mtbench_judge": 4,
                       "model_card": 2}
    assert "report_table_fast_path" in {j["rule"] for j in jobs}


@pytest.mark.slow
def test_fast_config_under_the_slurm_profile(workflow_copy):
    """The SLURM profile's dry run of config/fast.yaml: the stop-at-parity trainings go to the GPU partition with
    the profile's train resources (the paper's 30K-step ceiling bounds their runtime)."""
    jobs = parse_jobs(ok(snakemake("-n", "--profile", "profiles/slurm", "--configfile", "config/fast.yaml",
                                   "--cores", "64", cwd=workflow_copy)))
    trains = [j for j in jobs if j["rule"] == "train"]
    assert len(trains) == 3
    for job in trains:
        assert job["resources"]["gpu"] == "1" and int(job["resources"]["runtime"]) > 0, job
