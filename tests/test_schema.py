"""The config schema: every key documented with a default, shipped configs valid, bad configs stopped by name."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
CONFIGS = ["config.yaml", "config/smoke.yaml", "config/paper.yaml", "config/fast.yaml", "config/families.yaml"]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _resolve(schema: dict, root: dict) -> dict:
    """Merge a local ``$ref`` ("#/a/b") into the schema that holds it (the holder's own keys win)."""
    if "$ref" not in schema:
        return schema
    target = root
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def undocumented(schema: dict, root: dict, where: str = "config") -> list[str]:
    """Every declared key (an entry of some ``properties``) lacking a description or a default.

    Walks nested objects, per-entry schemas (``additionalProperties``) and array items; the branches of
    ``if``/``then``/``allOf`` only refine keys declared elsewhere, so they are not declarations.
    """
    schema = _resolve(schema, root)
    problems = []
    for key, sub in schema.get("properties", {}).items():
        full = _resolve(sub, root)
        missing = [k for k in ("description", "default") if k not in full]
        if missing:
            problems.append(f"{where}.{key}: no {' and no '.join(missing)}")
        problems += undocumented(full, root, f"{where}.{key}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        problems += undocumented(extra, root, f"{where}.<name>")
    items = schema.get("items")
    if isinstance(items, dict):
        problems += undocumented(items, root, f"{where}[]")
    return problems


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def test_every_key_has_description_and_default():
    schema = load_schema()
    problems = undocumented(schema, schema)
    assert not problems, "schema keys without description/default:\n" + "\n".join(problems)


def test_walker_finds_an_undocumented_key():
    # the walk itself must see nested keys, per-entry schemas and $refs, or the test above proves nothing
    schema = {"properties": {"a": {"description": "x", "default": {}, "properties": {"b": {"default": 1}}},
                             "m": {"description": "x", "default": {},
                                   "additionalProperties": {"properties": {"c": {"description": "y"}}}},
                             "r": {"$ref": "#/$defs/d", "default": 0}},
              "$defs": {"d": {"type": "integer"}}}
    assert sorted(undocumented(schema, schema)) == [
        "config.a.b: no description", "config.m.<name>.c: no default", "config.r: no description"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    config = yaml.safe_load((ROOT / name).read_text())
    validate(config, str(SCHEMA))
    assert config["report"]["dpi"] >= 50  # defaults were filled in


def _validation_error(config: dict) -> str:
    with pytest.raises(Exception) as info:
        validate(copy.deepcopy(config), str(SCHEMA))
    return str(info.value)


def test_bad_values_are_named():
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    cases = [
        ({"report": {**base["report"], "dpii": 100}}, "'dpii' was unexpected"),
        ({"report": {**base["report"], "dpi": 5}}, "['report']['dpi']"),
        ({"seed": "abc"}, "['seed']"),
        ({"variants": {"base": {"source": {"kind": "hub", "repo": "a/b"}}}}, "['variants']['base']['source']['revision']"),
        ({"variants": {"base": {"source": {"kind": "toy"}, "evals": ["h7"]}}}, "['variants']['base']['evals'][0]"),
        ({"unknown_section": {}}, "'unknown_section' was unexpected"),
    ]
    for change, needle in cases:
        message = _validation_error({**base, **change})
        assert needle in message, (change, message)


@pytest.mark.slow
def test_bad_config_stops_the_workflow_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    # A --configfile replaces the embedded default, so the bad file is a full config with one typo.
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["report"]["dpii"] = 3
    bad.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([SNAKEMAKE, "--cores", "1", "--configfile", str(bad), "--directory", str(ROOT),
                           "--snakefile", str(ROOT / "Snakefile"), "--config", f"results={tmp_path / 'results'}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "dpii" in out and "ValidationError" in out, out[-3000:]
    assert not (tmp_path / "results").exists()  # nothing ran


@pytest.mark.slow
@pytest.mark.parametrize("change, needle", [
    (lambda c: c["variants"]["neox"]["source"].update(family="olmo"),
     "variants.neox.source.family 'olmo' disagrees with world.teachers.neox.family 'gpt_neox'"),
    (lambda c: c["variants"]["neox"].update(chat_format="orion"), "variants.neox.chat_format must be null"),
    (lambda c: c["train"]["pilot"].update(variants=["base", "neox"]), "train.pilot.variants: 'neox' is a 'gpt_neox'"),
    # an OLMo teacher with convert.norms holding fit: refused by the DAG, not by a conversion job after pretraining
    (lambda c: c["world"]["teachers"]["neox"].update(family="olmo"),
     "variant 'neox': a 'olmo' source refuses norm mapping 'fit'"),
    (lambda c: c["variants"]["neox"].update(convert={"norms": ["exact"]}),
     "variants.neox.convert.norms: ['exact'] lacks ['paper'], which its students start from"),
    (lambda c: c["variants"]["neox"].update(convert={"norms": ["paper", "centered"]}),
     "variants.neox.convert.norms: ['centered'] are not in convert.norms"),
])
def test_family_keys_are_checked_before_any_job(tmp_path, change, needle):
    """A toy variant's family is its recipe's: a disagreeing variant key, a chat format or the (Orion-only) pilot on
    a non-Orion variant stops a dry run with one line naming the keys."""
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    change(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(bad), "--directory", str(tmp_path),
                           "--snakefile", str(ROOT / "Snakefile"), "--config", f"results={tmp_path / 'results'}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
