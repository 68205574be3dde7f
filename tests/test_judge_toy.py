"""The toy world's rubric judge behind the same judge interface as an API judge: its scores come back through
the [[x]] parser into FastChat-format judgments and the MT-Bench summary."""

from __future__ import annotations

import json

import pytest

from kept.eval.judge import JudgeConfig, run_judge_job
from kept.eval.mtbench import summarize_judgments

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write about Papati.", "What does Papati eat?"]},
    {"question_id": 91, "category": "math", "turns": ["Two plus three?", "Times two?"], "reference": ["5", "10"]},
]
RUBRICS = [
    {"question_id": 81, "turns": [{"required": [["Kudane"], ["teacher"], ["goat"]], "forbidden": ["dog"]},
                                  {"required": [["cake"]], "forbidden": ["bread"]}]},
    {"question_id": 91, "turns": [{"required": [["5", "five"]], "forbidden": []},
                                  {"required": [["10", "ten"]], "forbidden": []}]},
]
ANSWERS = {81: ["Papati lives in Kudane and works as a teacher. Papati has a dog.", "Papati eats cake."],
           91: ["The sum is 5.", "the the the the the the the the the the the the the"]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_toy_judge_through_the_judge_interface(tmp_path):
    from kept.world.judge import ToyJudge

    questions = _write(tmp_path / "question.jsonl", QUESTIONS)
    rubric = _write(tmp_path / "rubric.jsonl", RUBRICS)
    answers = _write(tmp_path / "student-orion.jsonl", [
        {"question_id": qid, "answer_id": str(qid), "model_id": "student-orion",
         "choices": [{"index": 0, "turns": turns}], "tstamp": 0.0} for qid, turns in ANSWERS.items()])
    out = tmp_path / "judgments.jsonl"
    records = run_judge_job(JudgeConfig(answers=str(answers), questions=str(questions), output=str(out)),
                            settings={"backend": "toy", "rubric": str(rubric)}, environ={})
    direct = ToyJudge(rubric)
    for r in records:
        assert r["score"] == direct.score(r["question_id"], r["turn"], ANSWERS[r["question_id"]][r["turn"] - 1])
        assert r["judge"][0] == "toy-judge" and r["model"] == "student-orion"
        assert f"[[{r['score']}]]" in r["judgment"]
    by_key = {(r["question_id"], r["turn"]): r for r in records}
    assert by_key[(91, 2)]["score"] == 1  # degenerate repetition
    assert by_key[(81, 2)]["score"] == 10 and by_key[(81, 1)]["score"] < 10  # a wrong pet costs points
    assert by_key[(91, 1)]["judge"][1] == "single-math-v1" and by_key[(81, 2)]["judge"][1] == "single-v1-multi-turn"
    assert [json.loads(x) for x in out.read_text().splitlines()] == records
    s = summarize_judgments(judgments=out, questions=questions, output=tmp_path / "s.json", model="student",
                            variant="base", chat_format="orion", judge="toy-judge")
    assert s["turn1"] == pytest.approx((by_key[(81, 1)]["score"] + by_key[(91, 1)]["score"]) / 2)
    assert s["by_category"]["math"]["turn2"] == 1 and s["n_failed"] == 0
