"""The graft and layer-fit axes in the DAG (issue 28): init names, the dry run of config/graft.yaml (convert per G x
init, every method trained from each, measured KV caches and the graft table), a G the toy teacher cannot take, and
a layer-fitted init beside an approximate family's mappings."""

from __future__ import annotations

import json

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
    lfit = parse_init("paper-lfit")
    assert (lfit.norm, lfit.kv_heads, lfit.layer_fit, lfit.name) == ("paper", None, True, "paper-lfit")
    assert parse_init("exact-kv2-fit-lfit").layer_fit and parse("xkd_z@paper-lfit.s2").init == "paper-lfit"
    assert parse("ut@paper-lfitx") is None
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


def failed_dry_run(cfg: dict, path, workflow_copy) -> str:
    """Write cfg to path, dry-run the workflow with it, check that the dry run fails; its output."""
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "2", "--configfile", str(path), cwd=workflow_copy)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_graft_a_toy_teacher_cannot_take_fails_the_dry_run(workflow_copy, tmp_path):
    """G = 3 does not divide g8's 8 heads: the dry run names the key and the divisors, before any job runs."""
    cfg = yaml.safe_load((workflow_copy / "config" / "graft.yaml").read_text())
    cfg["variants"]["g8"]["convert"]["kv_heads"] = [4, 3]
    out = failed_dry_run(cfg, tmp_path / "graft-bad.yaml", workflow_copy)
    assert "variants.g8.convert.kv_heads (toy teacher 'g8'): --kv-heads 3 does not divide the 8 KV heads" in out
    assert "[1, 2, 4]" in out


@pytest.mark.slow
def test_layer_fit_axis_adds_one_init_and_its_students(workflow_copy, tmp_path):
    """variants.neox.convert.layer_fit alone on the families config (the default has no approximate family): neox
    converts its primary mapping once more with the layer fit (paper-lfit), every method trains from it, nothing
    else changes (no graft jobs)."""
    cfg = yaml.safe_load((workflow_copy / "config" / "families.yaml").read_text())
    for variant in cfg["variants"].values():  # the shipped config turns it on for four families: neox only here
        variant.get("convert", {}).pop("layer_fit", None)
    cfg["variants"]["neox"]["convert"] = {"layer_fit": True}
    overlay = tmp_path / "lfit.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    jobs = parse_jobs(ok(snakemake("-n", "--cores", "2", "--configfile", str(overlay), cwd=workflow_copy)))
    lfit = [(j["rule"], j["wildcards"]) for j in jobs if "lfit" in str(j["wildcards"])]
    assert sorted(w["variant"] + ":" + w["init"] for r, w in lfit if r == "convert") == ["neox:paper-lfit"]
    assert sorted(w["method"] for r, w in lfit if r == "train") == [f"{m}@paper-lfit" for m in METHODS]
    assert {w["variant"] for _, w in lfit} == {"neox"}
    assert not {j["rule"] for j in jobs} & {"kv_cache", "report_table_graft"}


@pytest.mark.slow
def test_layer_fit_list_fits_each_named_mapping(workflow_copy, tmp_path):
    """variants.<name>.convert.layer_fit as a list of mappings: each listed mapping is converted once more with the
    layer fit (paper-lfit and exact-lfit for neox) and every method trains from each; a mapping the variant does not
    convert is refused, naming the key and the variant's mappings."""
    cfg = yaml.safe_load((workflow_copy / "config" / "families.yaml").read_text())
    for variant in cfg["variants"].values():
        variant.get("convert", {}).pop("layer_fit", None)
    cfg["variants"]["neox"]["convert"] = {"layer_fit": ["paper", "exact"]}
    overlay = tmp_path / "lfit-list.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    jobs = parse_jobs(ok(snakemake("-n", "--cores", "2", "--configfile", str(overlay), cwd=workflow_copy)))
    lfit = [(j["rule"], j["wildcards"]) for j in jobs if "lfit" in str(j["wildcards"])]
    assert sorted(w["variant"] + ":" + w["init"] for r, w in lfit if r == "convert") == [
        "neox:exact-lfit", "neox:paper-lfit"]
    assert sorted(w["method"] for r, w in lfit if r == "train") == sorted(
        f"{m}@{i}" for m in METHODS for i in ("paper-lfit", "exact-lfit"))
    # the findings judge each fitted init against the mapping it refines: each one's fidelity reaches them, labelled
    # (the dry run does not print params: a Snakefile that includes the workflow prints the labels it parsed)
    probe = workflow_copy / "probe-findings.smk"
    probe.write_text('include: "Snakefile"\nimport json\n'
                     'print("FINDINGS_LABELS=" + json.dumps([list(l) for l, _, _ in FINDINGS_ITEMS]))\n')
    out = ok(snakemake("-n", "-s", str(probe), "--cores", "1", "--configfile", str(overlay), cwd=workflow_copy))
    labels = json.loads(next(line for line in out.splitlines() if line.startswith("FINDINGS_LABELS="))[16:])
    assert {m for v, m, tag in labels if v == "neox" and tag == "fidelity"} >= {
        "init-paper", "init-exact", "init-paper-lfit", "init-exact-lfit"}

    cfg["variants"]["olmo"]["convert"] = {"norms": ["paper", "exact"], "layer_fit": ["paper", "centered"]}
    out = failed_dry_run(cfg, tmp_path / "lfit-bad.yaml", workflow_copy)
    assert "variants.olmo.convert.layer_fit: ['centered'] are not among the mappings the variant converts" in out


def test_kv_cache_is_measured_in_transformers_cache(tmp_path):
    """Rule kv_cache's measurement (kept.models.kv_bytes_per_token): keys and values of every layer in the cache
    of one forward, per token -- 2 x layers x KV heads x head dim x 4 bytes for a float32 Llama with 2 KV heads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kept.models import kv_bytes_per_token

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    assert kv_bytes_per_token(tmp_path / "m", tokens=16) == 2 * 3 * 2 * 8 * 4
    assert kv_bytes_per_token(tmp_path / "m", tokens=16, dtype="bfloat16") == 2 * 3 * 2 * 8 * 2
