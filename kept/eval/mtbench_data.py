"""MT-Bench's data files (FastChat llm_judge layout), read and validated in one place: the questions, the judge
prompts and the reference answers. Both the answer generator (:mod:`kept.eval.mtbench`) and the judge
(:mod:`kept.eval.judge`) read them from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.errors import KeptError

PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")


def load_questions(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """FastChat questions, validated: ``question_id``, ``category``, ``turns`` (non-empty list of str)."""
    from kept.eval.common import read_jsonl, require_keys

    rows = read_jsonl(path, what="MT-Bench questions")
    seen = set()
    for i, q in enumerate(rows, start=1):
        where = f"{path}:{i}"
        require_keys(q, ("question_id", "category", "turns"), where=where)
        if not isinstance(q["turns"], list) or not q["turns"] or not all(isinstance(t, str) for t in q["turns"]):
            raise KeptError(f"{where}: 'turns' must be a non-empty list of strings")
        if q["question_id"] in seen:
            raise KeptError(f"{where}: duplicate question_id {q['question_id']!r}")
        seen.add(q["question_id"])
    return rows[:limit] if limit is not None else rows


def load_prompts(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """FastChat's judge_prompts.jsonl as ``{name: record}``; the four single-grading prompts must be there.
    ``None`` gives minimal built-in prompts (only for judges that ignore the prompt text, e.g. the toy)."""
    if path is None:
        return {name: {"name": name, "system_prompt": "", "output_format": "[[rating]]",
                       "prompt_template": "[Question]\n{question_1}\n[Answer]\n{answer_1}" if "multi" in name
                       else "[Question]\n{question}\n[Answer]\n{answer}"} for name in PROMPT_NAMES}
    from kept.eval.common import read_jsonl, require_keys

    prompts = {}
    for i, row in enumerate(read_jsonl(path, what="judge prompts"), start=1):
        require_keys(row, ("name", "system_prompt", "prompt_template", "output_format"), where=f"{path}:{i}")
        prompts[row["name"]] = row
    missing = [n for n in PROMPT_NAMES if n not in prompts]
    if missing:
        raise KeptError(f"{path}: missing judge prompt(s) {missing}")
    for name in PROMPT_NAMES:
        if prompts[name]["output_format"] != "[[rating]]":
            raise KeptError(f"{path}: prompt {name!r} has output_format {prompts[name]['output_format']!r}, "
                            "expected '[[rating]]'")
    return prompts


def load_references(path: str | Path | None, questions: list[dict[str, Any]]) -> dict[Any, list[str]]:
    """Reference answers by question id: from a FastChat reference answer file (answer format) when given,
    else from the questions' own ``reference`` field."""
    refs: dict[Any, list[str]] = {}
    if path is not None:
        from kept.eval.common import read_jsonl

        for i, row in enumerate(read_jsonl(path, what="reference answers"), start=1):
            try:
                refs[row["question_id"]] = list(row["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError) as exc:
                raise KeptError(f"{path}:{i}: not a FastChat answer record ({exc})") from exc
    for q in questions:
        if q["question_id"] not in refs and isinstance(q.get("reference"), list):
            refs[q["question_id"]] = list(q["reference"])
    return refs
