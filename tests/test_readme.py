"""The README's commands exist and CI runs the README's test command verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_setup_section_has_the_two_commands():
    blocks = bash_blocks(section("Set-up and run (fresh machine)"))
    assert len(blocks) == 2
    setup, tests = blocks
    for part in ("python3 -m venv .venv", "pip install -r requirements.txt", "pip install --no-deps -e .",
                 ".venv/bin/snakemake --cores 2"):
        assert part in setup
    assert "pytest" in tests and "tests" in shlex.split(tests.split(";")[-1])
    for line in setup.splitlines() + tests.splitlines():
        assert not line.rstrip().endswith("\\"), "one command per block, one line each"


def test_ci_runs_the_readme_test_command_verbatim():
    tests = bash_blocks(section("Set-up and run (fresh machine)"))[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in [line.strip() for line in ci if not line.lstrip().startswith("#")]


def test_documented_profiles_configs_and_report_exist():
    text = section("One GPU box, or a SLURM cluster (profiles)")
    profiles = set(re.findall(r"--profile (\S+)", text))
    assert profiles == {"profiles/local", "profiles/slurm"}
    for profile in profiles:
        assert (ROOT / profile / "config.yaml").is_file()
    for placeholder in re.findall(r"`(<[A-Z_]+>)`", text):
        assert placeholder in (ROOT / "profiles/slurm/config.yaml").read_text()
    for env in re.findall(r"`(envs/\w+\.yaml)`", text):
        assert (ROOT / env).is_file()
    for config in re.findall(r"`(config[\w/]*\.yaml)`", section("Configs")):
        assert (ROOT / config).is_file(), config
    assert any("--report report.html" in b for b in bash_blocks(section("Report")))
