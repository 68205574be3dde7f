"""Workflow ergonomics checked without running anything: rule directives, pinned envs, lint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
# installed into the driver's environment only: they run the workflow and the tests, no rule imports them
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "pytest"}


def rule_blocks(path: Path) -> dict[str, str]:
    """rule name -> the text of its block (until the next unindented line)."""
    blocks, name, lines = {}, None, []
    for line in path.read_text().splitlines():
        head = re.match(r"^(?:rule|checkpoint)\s+(\w+)\s*:", line)
        if head or (line.strip() and not line[0].isspace() and not line.startswith("#")):
            if name:
                blocks[name] = "\n".join(lines)
            name, lines = (head.group(1), []) if head else (None, [])
            continue
        if name:
            lines.append(line)
    if name:
        blocks[name] = "\n".join(lines)
    return blocks


def directive(block: str, key: str) -> str | None:
    """The text of one directive of a rule block (its first line's remainder plus deeper-indented lines)."""
    match = re.search(rf"^    {key}:(.*(?:\n(?:        .*|\s*))*)", block, flags=re.M)
    return match.group(1) if match else None


def all_rules() -> dict[str, tuple[Path, str]]:
    rules = {}
    for path in RULE_FILES:
        for name, block in rule_blocks(path).items():
            assert name not in rules, f"rule {name} defined twice"
            rules[name] = (path, block)
    return rules


def test_rule_parser_sees_directives():
    text = ("rule a:\n    input:\n        'x',\n    threads: 2\n    resources:\n        gpu=1,\n"
            "        mem_mb=10,\n\n\nrule b:\n    output:\n        'y',\nX = 1\n")
    path = ROOT / ".pytest_rule_parser.smk"
    try:
        path.write_text(text)
        blocks = rule_blocks(path)
    finally:
        path.unlink()
    assert set(blocks) == {"a", "b"}
    assert directive(blocks["a"], "threads").strip() == "2" and "mem_mb=10" in directive(blocks["a"], "resources")
    assert directive(blocks["b"], "threads") is None


def test_every_rule_declares_threads_log_and_env():
    rules = all_rules()
    assert len(rules) > 5, "no rules found"
    problems = []
    for name, (path, block) in rules.items():
        if name == "all":
            continue
        where = f"{path.relative_to(ROOT)}: rule {name}"
        if directive(block, "threads") is None:
            problems.append(f"{where}: no threads")
        if directive(block, "log") is None:
            problems.append(f"{where}: no log")
        conda = directive(block, "conda")
        if conda is None:
            problems.append(f"{where}: no conda env")
        else:
            for name in conda_envs(path, conda.strip()):
                env = (path.parent / name).resolve()
                if not env.is_file():
                    problems.append(f"{where}: conda env {env} missing")
    assert not problems, "\n".join(problems)


def conda_envs(path: Path, value: str) -> list[str]:
    """The env files a conda directive can name: a quoted path, or a NAME assigned quoted env paths in the rule
    files (e.g. TRAIN_ENV, which picks envs/torch-gpu.yaml for the DeepSpeed profiles)."""
    if value[:1] in "\"'":
        return [value.strip("\"'")]
    assert re.fullmatch(r"[A-Z_]+", value), f"{path.name}: conda directive {value!r} is neither a path nor a NAME"
    found = []
    for rules in RULE_FILES:
        for block in re.findall(rf"^{value} = \((.*?)^\)", rules.read_text(), flags=re.M | re.S):
            found += re.findall(r"\"(\.\./envs/[\w.-]+\.yaml)\"", block)
    assert found, f"{path.name}: {value} names no env file"
    return found


def test_gpu_rules_declare_memory_and_runtime():
    gpu_rules = []
    problems = []
    for name, (path, block) in all_rules().items():
        resources = directive(block, "resources") or ""
        if re.search(r"\bgpu\s*=", resources):
            gpu_rules.append(name)
            for key in ("mem_mb", "runtime"):
                if not re.search(rf"\b{key}\s*=", resources):
                    problems.append(f"{path.relative_to(ROOT)}: GPU rule {name} has no {key}")
    assert gpu_rules, "no rule declares a gpu resource"
    assert not problems, "\n".join(problems)


def _pins(lines: list[str], where: str) -> dict[str, str | None]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:==([\w.+\-]+))?", line)
        assert match, f"{where}: cannot read requirement {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_envs_are_pinned_like_requirements():
    required = _pins((ROOT / "requirements.txt").read_text().splitlines(), "requirements.txt")
    gpu_only = _pins((ROOT / "requirements-gpu.txt").read_text().splitlines(), "requirements-gpu.txt")
    assert gpu_only.get("deepspeed") and not set(gpu_only) & set(required)  # GPU-only pins stay out of the CPU install
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} >= {"torch", "eval", "report"}
    covered = set()
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        deps = spec["dependencies"]
        assert "python=3.11" in deps, f"{env.name}: python not pinned to 3.11"
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        assert "-e ../.." in pip, f"{env.name}: does not install the kept package (from .snakemake/conda/)"
        pins = _pins(pip, env.name)
        for name, version in pins.items():
            assert version, f"{env.name}: {name} is not pinned"
            pinned = required.get(name) or gpu_only.get(name)
            if pinned:
                assert version == pinned, f"{env.name}: {name}=={version}, the requirements have {pinned}"
        if set(gpu_only) & set(pins):
            assert env.stem.endswith("-gpu") and set(gpu_only) <= set(pins), f"{env.name}: GPU-only pins in a CPU env"
        covered |= set(pins)
    missing = set(required) - covered - DRIVER_ONLY
    assert not missing, f"requirements.txt packages in no env: {sorted(missing)}"


@pytest.mark.slow
def test_lint_is_clean():
    proc = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
