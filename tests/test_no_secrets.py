"""No secret leaks (issue 8, item 4): the judge API key never appears in the log or results of the workflow's
judge step (judgments and summary), cannot be put into the config, and no code anywhere enables remote code."""

from __future__ import annotations

import json
import logging
import re
import runpy
import secrets
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from eval_tiny import write_prompts, write_questions
from test_judge_client import FakeOpenAI, _answer_file

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", "logs", "benchmarks",
             "_work"}  # bench/_work: git-ignored bench scratch (e.g. the llama.cpp sources bench_llamacpp builds)
CODE_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".cfg", ".toml", ".ini", ".sh", ".json", ".ipynb"}  # code, not prose


def _repo_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith(".tmp-") for part in rel.parts):
            continue
        if path.is_file() and (path.suffix in CODE_SUFFIXES or path.name == "Snakefile"):
            yield path


def test_remote_code_is_never_enabled_anywhere():
    flag = "trust_remote_code"
    enabled = re.compile(flag + r"""\s*(=|:|":)\s*["']?(True|true|1|yes)\b""")
    as_kwarg = re.compile(r"""["']""" + flag + r"""["']\s*:\s*True""")
    hits = []
    files = list(_repo_files())
    assert any(p.name == "models.py" for p in files)  # the walk does see the package
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            if enabled.search(line) or as_kwarg.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert hits == []


class _Named(dict):
    """The small part of Snakemake's Namedlist the scripts use: attribute access, .get, [0]."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _run_script(name, *, input, output, params, log):
    """Run a Snakemake script file with a stand-in `snakemake` object, as Snakemake's script directive does."""
    smk = type("Snakemake", (), {})()
    smk.input, smk.output, smk.params = _Named(input), _Named(output), _Named(params)
    smk.log, smk.threads, smk.rule = _Named(log=str(log)), 1, name
    root = logging.getLogger()
    saved_handlers, saved_level, saved_stderr = root.handlers[:], root.level, sys.stderr
    root.handlers = []
    try:
        runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), init_globals={"snakemake": smk}, run_name="__main__")
    finally:
        for h in root.handlers:
            h.close()
        if sys.stderr is not saved_stderr:
            sys.stderr.close()
        root.handlers, root.level, sys.stderr = saved_handlers, saved_level, saved_stderr


def test_judge_and_summary_steps_never_write_the_key(tmp_path, monkeypatch):
    key = "sk-live-" + secrets.token_hex(20)
    monkeypatch.setenv("KEPT_SECRET_JUDGE_KEY", key)
    questions = write_questions(tmp_path / "question.jsonl")
    prompts = write_prompts(tmp_path / "judge_prompts.jsonl")
    answers = _answer_file(tmp_path / "model_answer" / "xkd_z-llama3.jsonl", model_id="xkd_z-llama3")
    judge_cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["eval"]["mtbench"]["judge"]
    # one server error (retry is logged), one echo of the Authorization header, then scores
    with FakeOpenAI(script=[("status", 503), ("echo_auth",)]) as srv:
        judge = dict(judge_cfg, base_url=srv.url, api_key_env="KEPT_SECRET_JUDGE_KEY", backoff_s=0.01)
        _run_script("mtbench_judge",
                    input={"answers": str(answers), "questions": str(questions), "prompts": str(prompts)},
                    output={"judgments": str(tmp_path / "judgments.jsonl"),
                            "summary": str(tmp_path / "mtbench-llama3.json")},
                    params={"judge": judge, "judge_name": judge["model"], "question_limit": None, "model": "xkd_z",
                            "variant": "chat", "chat_format": "llama3"},
                    log=tmp_path / "judge.log")
    assert srv.requests and all(r["headers"]["Authorization"] == f"Bearer {key}" for r in srv.requests)
    summary = json.loads((tmp_path / "mtbench-llama3.json").read_text())
    assert summary["n_judgments"] == 16 and summary["average"] is not None
    log_text = (tmp_path / "judge.log").read_text()
    assert "retry" in log_text  # the log is real and records the failed call
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(encoding="utf-8", errors="replace"), path


def test_config_cannot_hold_a_key_only_its_variable_name():
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    jsonschema.validate(config, schema)
    config["eval"]["mtbench"]["judge"]["api_key"] = "sk-should-not-be-here"
    with pytest.raises(jsonschema.ValidationError, match="api_key"):
        jsonschema.validate(config, schema)
    del config["eval"]["mtbench"]["judge"]["api_key"]
    config["eval"]["mtbench"]["judge"]["api_key_env"] = "sk-abc123 value"  # a key pasted where a NAME goes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
