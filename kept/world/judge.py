"""The toy MT-Bench judge: scores an answer 1-10 from the world's facts, behind the LLM judge's interface.

Each turn of each question has a rubric (``mtbench/rubric.jsonl``): ``required`` is a list of groups of
alternative phrases (a group is met when the answer contains any of them), ``forbidden`` lists phrases that state
a wrong fact (another town, job, pet, ...). Matching is case-insensitive on word boundaries.

Score = 1 + 9 * (groups met / groups), minus 3 per forbidden phrase present, clipped to 1..10; an empty answer, or
one whose words are mostly repeats (degenerate generation), scores 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kept.errors import KeptError

FORBIDDEN_PENALTY = 3


def _has(text: str, phrase: str) -> bool:
    pattern = r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)"
    return re.search(pattern, text) is not None


def degenerate(answer: str) -> bool:
    """True for an empty answer or one where fewer than a third of the words are distinct (loops)."""
    words = re.findall(r"\w+", answer.lower())
    if not words:
        return True
    return len(words) >= 12 and len(set(words)) < len(words) / 3


def score_answer(rubric: dict[str, Any], answer: str) -> int:
    """The 1-10 score of ``answer`` under one turn's rubric."""
    if degenerate(answer):
        return 1
    text = answer.lower()
    groups = rubric.get("required", [])
    met = sum(any(_has(text, alt) for alt in group) for group in groups)
    score = 1 + 9 * met / len(groups) if groups else 10
    score -= FORBIDDEN_PENALTY * sum(_has(text, w) for w in rubric.get("forbidden", []))
    return int(max(1, min(10, round(score))))


class ToyJudge:
    """``ToyJudge(rubric_path).score(question_id, turn, answer) -> int`` in 1..10 (turn is 1 or 2)."""

    def __init__(self, rubric_path: str | Path) -> None:
        path = Path(rubric_path)
        if not path.is_file():
            raise KeptError(f"{path}: missing MT-Bench rubric file")
        self.path = path
        self.rubrics: dict[int, list[dict[str, Any]]] = {}
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    qid, turns = int(rec["question_id"]), rec["turns"]
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise KeptError(f"{path}:{n}: expected {{question_id, turns}} ({exc})") from exc
                if not isinstance(turns, list) or len(turns) != 2:
                    raise KeptError(f"{path}:{n}: question {qid} needs a rubric for each of its 2 turns")
                self.rubrics[qid] = turns

    def score(self, question_id: int, turn: int, answer: str) -> int:
        if question_id not in self.rubrics:
            raise KeptError(f"{self.path}: no rubric for question_id {question_id}")
        if turn not in (1, 2):
            raise KeptError(f"{self.path}: turn must be 1 or 2, got {turn!r}")
        return score_answer(self.rubrics[question_id][turn - 1], answer)


def rubric_facts(*, rubric_path: str | Path, answers_path: str | Path) -> list[dict[str, Any]]:
    """Per required group of every judged turn of a FastChat answer file: ``{"id": "qid:turn:group", "corpus":
    "in" | "out", "met"}`` (the group met as :func:`score_answer` counts it: never in a degenerate answer). The
    rubric's groups carry their corpus tags (kept.world.evaldata.tag_rubric); a rubric without them is an error."""
    from kept.jsonl import read_jsonl

    rubrics = ToyJudge(rubric_path).rubrics
    out = []
    for i, rec in enumerate(read_jsonl(answers_path, what="MT-Bench answers"), start=1):
        where = f"{answers_path}:{i}"
        try:
            qid, turns = int(rec["question_id"]), rec["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise KeptError(f"{where}: not a FastChat answer record ({exc})") from exc
        if qid not in rubrics:
            raise KeptError(f"{rubric_path}: no rubric for question_id {qid} ({where})")
        for turn, (rubric, answer) in enumerate(zip(rubrics[qid], turns), start=1):
            tags = rubric.get("corpus")
            groups = rubric.get("required", [])
            if not isinstance(tags, list) or len(tags) != len(groups):
                raise KeptError(f"{rubric_path}: question {qid} turn {turn} has no corpus tag per required group "
                                "(rebuild the eval data)")
            text = answer.lower()
            bad = degenerate(answer)
            for g, (group, tag) in enumerate(zip(groups, tags)):
                out.append({"id": f"{qid}:{turn}:{g}", "corpus": tag,
                            "met": not bad and any(_has(text, alt) for alt in group)})
    return out
