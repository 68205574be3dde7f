"""The graft axis in the DAG (issue 28): init names, the dry run of config/graft.yaml (convert per G x init, every
method trained from each, measured KV caches and the graft table) and a G the toy teacher cannot take."""

from __future__ import annotations

import pytest
import yaml

from kept.errors import ConfigError
from kept.grid import KV_INITS, graft_init, parse, parse_init, trained
from test_workflow import ok, parse_jobs, snakemake, workflow_copy  # noqa: F401  (fixture)

GRAFTS = [f"exact-kv{g}-{i}" for g in (4, 2) for i in ("mean", "aligned", "fit")]
METHODS = ("ut", "xkd_h", "xkd_z")


def test_graft_init_names_round_trip():
    from kept.convert.graft import KV_INITS as CONVERTER_INITS

    assert KV_INITS == CONVERTER_INITS  # the names the DAG builds are the converter's inits
    assert graft_init("exact", 2, "fit") == "exact-kv2-fit"
    found = parse_init("exact-kv2-fit")
    assert (found.norm, found.kv_heads, found.kv_init) == ("exact", 2, "fit")
    assert parse_init("paper").kv_heads is None
    name = trained("xkd_z", init="exact-kv2-fit", corpus=None, seed=7, primary_init="exact", primary_seed=1,
                   stop=True).name
    assert name == "xkd_z@exact-kv2-fit-parity.s7"
    t = parse(name)
    assert (t.method, t.init, t.seed, t.stop) == ("xkd_z", "exact-kv2-fit", 7, True)
    assert parse("ut@exact-kv2-bogus") is None and parse("ut@exact-kv0-fit") is None
    with pytest.raises(ConfigError, match="kv init 'svd'"):
        graft_init("exact", 2, "svd")


@pytest.mark.slow
def test_graft_config_plans_the_graft_grid(workflow_copy):
    jobs = parse_jobs(ok(snakemake("-n", "--cores", "2", "--configfile", "config/graft.yaml", cwd=workflow_copy)))
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j["wildcards"])
    assert sorted(w["init"] for w in by_rule["convert"]) == sorted(["exact"] + GRAFTS)
    students = {f"{m}@{i}" for m in METHODS for i in GRAFTS} | set(METHODS)  # exact is the primary init
    assert sorted(w["method"] for w in by_rule["train"]) == sorted(students | {"ut@teacher"})
    assert {w["model"] for w in by_rule["kv_cache"]} == {f"init-{i}" for i in ["exact"] + GRAFTS}
    evaluated = {w["model"] for w in by_rule["eval_harness"]}
    assert evaluated == {"teacher", "ut@teacher"} | {f"init-{i}" for i in ["exact"] + GRAFTS} | students
    assert {w["method"] for w in by_rule["eval_recovery"]} == students  # tokens to 0.99 for every student
    assert {"report_table_graft", "report_table_split", "report_findings"} <= set(by_rule)


@pytest.mark.slow
def test_graft_a_toy_teacher_cannot_take_fails_the_dry_run(workflow_copy, tmp_path):
    """G = 3 does not divide g8's 8 heads: the dry run names the key and the divisors, before any job runs."""
    cfg = yaml.safe_load((workflow_copy / "config" / "graft.yaml").read_text())
    cfg["variants"]["g8"]["convert"]["kv_heads"] = [4, 3]
    bad = tmp_path / "graft-bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "2", "--configfile", str(bad), cwd=workflow_copy)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "variants.g8.convert.kv_heads (toy teacher 'g8'): --kv-heads 3 does not divide the 8 KV heads" in out
    assert "[1, 2, 4]" in out
