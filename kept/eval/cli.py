"""``kept eval-harness | mtbench-answer | mtbench-judge | longctx | code-probe``: the evaluation functions from
the command line (the Snakemake scripts call the same functions)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from kept.errors import ConfigError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _json_arg(text: str) -> Any:
    """A JSON value given inline or as ``@file``."""
    try:
        return json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read JSON argument {text[:60]!r} ({exc})") from exc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Orion teacher or stock Llama)")
    p.add_argument("--model-name", default="", help="grid label written into the summary")
    p.add_argument("--variant", default="")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("-v", "--verbose", action="store_true")


def harness_cli(argv: list[str]) -> int:
    """Run lm-eval tasks on one model and write the harness summary."""
    from kept.eval.harness import HarnessConfig, TaskSpec, run_harness

    p = argparse.ArgumentParser(prog="kept eval-harness", description=harness_cli.__doc__)
    _common(p)
    p.add_argument("--output", required=True, help="summary JSON")
    p.add_argument("--raw-dir", required=True, help="directory for lm-eval results and per-sample logs")
    p.add_argument("--suite", default="h6")
    p.add_argument("--tasks", required=True, type=_json_arg,
                   help='JSON list (or @file) of {"name","task","shots","metric","chance"?,"average"?}')
    p.add_argument("--task-dir", default=None, help="extra lm-eval task YAML directory (toy suites)")
    p.add_argument("--no-default-tasks", action="store_true", help="do not index lm-eval's built-in tasks")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--bootstrap-iters", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--micro-macro", action="store_true", help="add micro/macro averages over leaf tasks")
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    if not isinstance(a.tasks, list):
        raise ConfigError("--tasks must be a JSON list")
    bs = a.batch_size if str(a.batch_size).startswith("auto") else int(a.batch_size)
    limit = int(a.limit) if a.limit is not None and a.limit >= 1 else a.limit
    cfg = HarnessConfig(
        model=a.model, output=a.output, raw_dir=a.raw_dir, suite=a.suite,
        tasks=[TaskSpec.from_dict(t, where=f"--tasks[{i}]") for i, t in enumerate(a.tasks)],
        model_name=a.model_name, variant=a.variant, task_dir=a.task_dir, include_defaults=not a.no_default_tasks,
        batch_size=bs, max_batch_size=a.max_batch_size, limit=limit, bootstrap_iters=a.bootstrap_iters,
        seed=a.seed, dtype=a.dtype, device=a.device, micro_macro=a.micro_macro,
    )
    summary = run_harness(cfg)
    print(json.dumps({c["name"]: c["value"] for c in summary["columns"]} | {"average": summary["average"]}))
    return 0


def mtbench_answer_cli(argv: list[str]) -> int:
    """Generate MT-Bench answers (FastChat answer file) for one model in one chat format."""
    from kept.eval.mtbench import AnswerConfig, generate_answers

    p = argparse.ArgumentParser(prog="kept mtbench-answer", description=mtbench_answer_cli.__doc__)
    _common(p)
    p.add_argument("--questions", required=True, help="FastChat question.jsonl")
    p.add_argument("--output", required=True, help="answer file; its stem is the FastChat model id")
    p.add_argument("--format", required=True, choices=["orion", "llama3"])
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--question-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    rows = generate_answers(AnswerConfig(
        model=a.model, questions=a.questions, output=a.output, model_id=Path(a.output).stem,
        chat_format=a.format, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
        question_limit=a.question_limit, seed=a.seed, dtype=a.dtype, device=a.device,
    ))
    print(f"{len(rows)} answers -> {a.output}")
    return 0


def mtbench_judge_cli(argv: list[str]) -> int:
    """Judge an MT-Bench answer file (FastChat single grading) and optionally write the summary."""
    from kept.eval.judge import JudgeConfig, judge_answers, make_backend, read_api_key
    from kept.eval.mtbench import summarize_judgments

    p = argparse.ArgumentParser(prog="kept mtbench-judge", description=mtbench_judge_cli.__doc__)
    p.add_argument("--answers", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--output", required=True, help="judgment file (FastChat format)")
    p.add_argument("--backend", required=True, choices=["openai", "toy"])
    p.add_argument("--judge-model", default=None, help="judge model name (openai backend)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable that holds the API key (the key is never an argument)")
    p.add_argument("--rubric", default=None, help="toy judge rubric.jsonl")
    p.add_argument("--prompts", default=None, help="FastChat judge_prompts.jsonl")
    p.add_argument("--reference-answers", default=None, help="FastChat reference_answer/<model>.jsonl")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--max-retries", type=int, default=6)
    p.add_argument("--summary", default=None, help="also write the MT-Bench summary JSON here")
    p.add_argument("--model-name", default="")
    p.add_argument("--variant", default="")
    p.add_argument("--format", default="")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    settings = {"backend": a.backend, "model": a.judge_model, "base_url": a.base_url, "rubric": a.rubric,
                "max_retries": a.max_retries}
    key = read_api_key(a.api_key_env, os.environ) if a.backend == "openai" else None
    backend = make_backend(settings, api_key=key)
    records = judge_answers(JudgeConfig(answers=a.answers, questions=a.questions, output=a.output,
                                        prompts=a.prompts, reference_answers=a.reference_answers,
                                        parallel=a.parallel), backend)
    print(f"{len(records)} judgments ({sum(r['score'] == -1 for r in records)} failed) -> {a.output}")
    if a.summary:
        s = summarize_judgments(judgments=a.output, questions=a.questions, output=a.summary, model=a.model_name,
                                variant=a.variant, chat_format=a.format, judge=backend.name)
        print(json.dumps({k: s[k] for k in ("turn1", "turn2", "average", "n_failed")}))
    return 0


def longctx_cli(argv: list[str]) -> int:
    """Perplexity against input length on long documents."""
    from kept.eval.longctx import LongCtxConfig, run_longctx

    p = argparse.ArgumentParser(prog="kept longctx", description=longctx_cli.__doc__)
    _common(p)
    p.add_argument("--source", action="append", required=True, metavar="NAME=JSONL",
                   help="documents {id, text, lang}; repeatable")
    p.add_argument("--lengths", required=True, help="comma-separated input lengths in tokens")
    p.add_argument("--output", required=True)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--train-max-length", type=int, default=None)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    sources = {}
    for s in a.source:
        name, sep, path = s.partition("=")
        if not sep:
            raise ConfigError(f"--source {s!r}: expected NAME=PATH")
        sources[name] = path
    out = run_longctx(LongCtxConfig(
        model=a.model, sources=sources, output=a.output, lengths=[int(x) for x in a.lengths.split(",")],
        model_name=a.model_name, variant=a.variant, max_docs=a.max_docs, train_max_length=a.train_max_length,
        dtype=a.dtype, device=a.device,
    ))
    print(json.dumps({n: dict(zip(v["lengths"], v["ppl"])) for n, v in out["sources"].items()}))
    return 0


def code_cli(argv: list[str]) -> int:
    """Code probe: perplexity and greedy answer accuracy."""
    from kept.eval.code import CodeConfig, run_code_probe

    p = argparse.ArgumentParser(prog="kept code-probe", description=code_cli.__doc__)
    _common(p)
    p.add_argument("--probe", required=True, help="JSONL {id, prompt, answer, text}")
    p.add_argument("--output", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    out = run_code_probe(CodeConfig(model=a.model, probe=a.probe, output=a.output, model_name=a.model_name,
                                    variant=a.variant, limit=a.limit, batch_size=a.batch_size, dtype=a.dtype,
                                    device=a.device))
    print(json.dumps({k: out[k] for k in ("ppl", "accuracy", "n")}))
    return 0
