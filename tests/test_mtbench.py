"""MT-Bench answers and summaries: FastChat's own loaders read our answer and judgment files, batched
left-padded generation equals plain greedy decoding in each chat format, category temperatures, and the
summary matches FastChat's show_result aggregation."""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from eval_tiny import MT_QUESTIONS, make_student, make_teacher, make_tokenizer_model, write_prompts, write_questions
from kept.chat import render
from kept.errors import KeptError
from kept.eval.judge import JudgeConfig, judge_answers
from kept.eval.mtbench import AnswerConfig, generate_answer_sets, generate_answers, summarize_judgments


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtbench")
    tok = make_tokenizer_model(d / "tok")
    return {"teacher": make_teacher(d / "teacher", tok), "student": make_student(d / "student", tok),
            "questions": write_questions(d / "question.jsonl"), "prompts": write_prompts(d / "judge_prompts.jsonl")}


@pytest.fixture(scope="module")
def fastchat_common():
    """fastchat.llm_judge.common, imported for its loader functions. Its module also imports the `openai` and
    `anthropic` client packages (used only by its API callers, which we do not use and do not install)."""
    for name in ("openai", "anthropic"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                sys.modules[name] = types.ModuleType(name)
    import fastchat.llm_judge.common as common

    return common


def _answers(world, tmp_path, model, fmt, **kw):
    cfg = AnswerConfig(model=str(world[model]), questions=str(world["questions"]),
                       output=str(tmp_path / "model_answer" / f"{model}-{fmt}.jsonl"), model_id=f"{model}-{fmt}",
                       chat_format=fmt, max_new_tokens=kw.pop("max_new_tokens", 8), batch_size=kw.pop("batch_size", 3),
                       **kw)
    return generate_answers(cfg), Path(cfg.output)


def test_fastchat_loaders_read_our_answer_files(world, tmp_path, fastchat_common):
    for model, fmt in (("teacher", "orion"), ("student", "llama3"), ("student", "orion")):
        _answers(world, tmp_path, model, fmt)
    questions = fastchat_common.load_questions(str(world["questions"]), None, None)
    answers = fastchat_common.load_model_answers(str(tmp_path / "model_answer"))
    assert sorted(answers) == ["student-llama3", "student-orion", "teacher-orion"]
    for model_id, by_qid in answers.items():
        assert sorted(by_qid) == sorted(q["question_id"] for q in questions)
        for qid, a in by_qid.items():
            assert a["model_id"] == model_id and a["question_id"] == qid
            assert len(a["choices"]) == 1 and len(a["choices"][0]["turns"]) == 2
            assert all(isinstance(t, str) for t in a["choices"][0]["turns"])
            assert isinstance(a["answer_id"], str) and isinstance(a["tstamp"], float)
    # FastChat's own consistency check between questions and answers
    fastchat_common.check_data(questions, answers, {}, list(answers), {})


def _greedy_reference(model_dir, messages, fmt, max_new_tokens):
    """Plain token-by-token greedy decoding of one prompt, no batching or padding."""
    from kept.chat import encode_with_specials
    from kept.models import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    text = render(messages, fmt, add_generation_prompt=True)
    ids = encode_with_specials(text, lambda s: tok(s, add_special_tokens=False)["input_ids"], {"<s>": 1, "</s>": 2})
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == 2:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("model,fmt", [("teacher", "orion"), ("student", "llama3"), ("student", "orion")])
def test_batched_answers_equal_plain_greedy_decoding(world, tmp_path, model, fmt):
    from kept.eval.mtbench import clean_answer

    greedy = {c: 0.0 for c in ("writing", "roleplay", "stem", "humanities", "math", "coding", "reasoning",
                                "extraction")}
    rows, _ = _answers(world, tmp_path, model, fmt, temperatures=greedy, max_new_tokens=10, batch_size=3)
    by_qid = {r["question_id"]: r["choices"][0]["turns"] for r in rows}
    for q in MT_QUESTIONS[:3]:
        t1, t2 = by_qid[q["question_id"]]
        ref1 = clean_answer(_greedy_reference(world[model], [{"role": "user", "content": q["turns"][0]}], fmt, 10),
                            fmt, ["<s>", "</s>", "<unk>"])
        assert t1 == ref1
        hist = [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": t1},
                {"role": "user", "content": q["turns"][1]}]
        assert t2 == clean_answer(_greedy_reference(world[model], hist, fmt, 10), fmt, ["<s>", "</s>", "<unk>"])


def test_answer_sets_equal_separate_runs(world, tmp_path):
    """One job answers in both formats with one model load; the files equal separate runs'."""
    cfgs = [AnswerConfig(model=str(world["student"]), questions=str(world["questions"]),
                         output=str(tmp_path / "set" / f"student-{fmt}.jsonl"), model_id=f"student-{fmt}",
                         chat_format=fmt, max_new_tokens=6, batch_size=4) for fmt in ("llama3", "orion")]
    sets = generate_answer_sets(cfgs)
    for fmt, rows in zip(("llama3", "orion"), sets):
        alone, _ = _answers(world, tmp_path / "alone", "student", fmt, max_new_tokens=6, batch_size=4)
        strip = lambda rs: [{k: v for k, v in r.items() if k != "tstamp"} for r in rs]  # noqa: E731
        assert strip(rows) == strip(alone)
        assert all(r["chat_format"] == fmt for r in rows)
    assert [r["choices"] for r in sets[0]] != [r["choices"] for r in sets[1]]  # different prompts


def test_category_temperatures(world, tmp_path):
    runs = {seed: _answers(world, tmp_path / str(seed), "student", "llama3", seed=seed, max_new_tokens=12)[0]
            for seed in (1, 2)}
    turns = {seed: {r["question_id"]: r["choices"][0]["turns"] for r in rows} for seed, rows in runs.items()}
    cats = {q["question_id"]: q["category"] for q in MT_QUESTIONS}
    for qid, cat in cats.items():
        if cat in ("math", "coding", "reasoning", "extraction"):  # FastChat: temperature 0 -> greedy
            assert turns[1][qid] == turns[2][qid], cat
    sampled = [qid for qid, cat in cats.items() if cat in ("writing", "roleplay")]  # temperature 0.7
    assert any(turns[1][q] != turns[2][q] for q in sampled)


def test_bad_questions_are_named(tmp_path, world):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "category": "writing"}) + "\n")
    with pytest.raises(KeptError, match=r"q.jsonl:1: missing key 'turns'"):
        _answers({**world, "questions": bad}, tmp_path, "teacher", "orion")
    assert not (tmp_path / "model_answer").exists() or not any((tmp_path / "model_answer").iterdir())


class ScriptedJudge:
    """A judge backend whose replies are a function of (question, turn): one reply carries no score."""

    name = "gpt-4"

    def complete(self, *, system, user, match):
        qid, turn = match.question["question_id"], match.turn
        if qid == 131 and turn == 2:
            return "I cannot rate this."
        return f"Fine answer. Rating: [[{(qid // 10) % 9 + turn}]]"

    def redact(self, text):
        return text


def test_judgments_summary_and_fastchat_show_result(world, tmp_path, fastchat_common, capsys):
    _, answers = _answers(world, tmp_path, "student", "llama3")
    out = tmp_path / "model_judgment" / "gpt-4_single.jsonl"
    records = judge_answers(JudgeConfig(answers=str(answers), questions=str(world["questions"]), output=str(out),
                                        prompts=str(world["prompts"]), parallel=2), ScriptedJudge())
    assert len(records) == 2 * len(MT_QUESTIONS)
    failed = [r for r in records if r["score"] == -1]
    assert [(r["question_id"], r["turn"]) for r in failed] == [(131, 2)] and "error" in failed[0]
    # math/reasoning/coding use the reference-based prompts, with the question's reference in the prompt
    math1 = next(r for r in records if r["question_id"] == 111 and r["turn"] == 1)
    assert math1["judge"] == ["gpt-4", "single-math-v1"] and "three" in math1["user_prompt"]
    math2 = next(r for r in records if r["question_id"] == 111 and r["turn"] == 2)
    assert math2["judge"] == ["gpt-4", "single-math-v1-multi-turn"] and "six" in math2["user_prompt"]

    # FastChat's own loader and its judge resolution read the file
    judgments = fastchat_common.load_single_model_judgments(str(out))
    qs = {q["question_id"]: q for q in fastchat_common.load_questions(str(world["questions"]), None, None)}
    for r in records:
        d = fastchat_common.resolve_single_judgment_dict(qs[r["question_id"]], judgments, judgments,
                                                         multi_turn=r["turn"] == 2)
        assert d[(r["question_id"], "student-llama3")]["score"] == r["score"]

    summary = summarize_judgments(judgments=out, questions=world["questions"], output=tmp_path / "s.json",
                                  model="student", variant="base", chat_format="llama3", judge="gpt-4")
    valid = {t: [r["score"] for r in records if r["turn"] == t and r["score"] != -1] for t in (1, 2)}
    assert summary["turn1"] == pytest.approx(sum(valid[1]) / len(valid[1]))
    assert summary["turn2"] == pytest.approx(sum(valid[2]) / len(valid[2]))
    assert summary["n_failed"] == 1 and summary["n_judgments"] == 16
    assert summary["by_category"]["extraction"]["turn2"] is None
    assert set(summary["by_category"]) == {q["category"] for q in MT_QUESTIONS}

    # FastChat's show_result (single mode) prints the same means
    from fastchat.llm_judge.show_result import display_result_single

    capsys.readouterr()
    display_result_single(argparse.Namespace(bench_name="mt_bench", input_file=str(out), judge_model="gpt-4",
                                             model_list=None))
    printed = capsys.readouterr().out
    nums = [float(x) for x in re.findall(r"student-llama3\s+(?:\d\s+)?([0-9.]+)", printed)]
    assert nums == pytest.approx([summary["turn1"], summary["turn2"], summary["average"]], abs=1e-5)


def test_summary_refuses_when_no_judgment_is_valid(world, tmp_path):
    out = tmp_path / "j.jsonl"
    out.write_text("".join(json.dumps({"question_id": q["question_id"], "model": "m", "judge": ["j", "single-v1"],
                                       "score": -1, "turn": 1, "judgment": "$ERROR$"}) + "\n"
                           for q in MT_QUESTIONS))
    with pytest.raises(KeptError, match="no valid judgment"):
        summarize_judgments(judgments=out, questions=world["questions"], output=tmp_path / "s.json", model="m",
                            variant="v", chat_format="orion", judge="j")
    assert not (tmp_path / "s.json").exists()


def test_judge_and_answers_share_formats_without_importing_each_other():
    """The MT-Bench file formats live in one lower module; the judge and the answer generator do not import
    each other (issue 19's house item)."""
    import ast
    from pathlib import Path

    import kept.eval.judge as judge
    import kept.eval.mtbench as mtbench

    for mod, other in ((judge, "kept.eval.mtbench"), (mtbench, "kept.eval.judge")):
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert other not in imported, f"{mod.__name__} imports {other}"
        assert "kept.eval.mtbench_data" in imported
