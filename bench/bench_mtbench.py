"""Why students sit at the MT-Bench floor: what the answers contain, and how far each model is from the answers.

Reads a finished run of the default config (``results/``, or the directory in ``$KEPT_BENCH_RESULTS``): every
MT-Bench answer file with the toy rubric, and every model of the grid. Per variant, model and chat format:

- answers: turns judged, mean length in words, share cut at ``max_new_tokens``, share degenerate (empty or
  looping: the judge's 1), share naming the question's subject (the person, town or text entity it asks about),
  share stating at least one required fact, mean share of required facts, share stating a wrong fact
  (forbidden word), and the judge's mean score;
- ``ref NLL``: the teacher-forced negative log-likelihood per token of the rubric's reference answers (what
  the toy judge wants), both turns, conditioned on the conversation in that chat format: a graded measure of
  how close the model is to producing the right answer, independent of sampling and of the judge;
- ``dialogue KL``: mean per-token KL(teacher || model) on the world's training dialogues (Orion format, the
  teacher's), next to the same on the transfer corpus: whether transfer on passages carries over to dialogue.

The baseline of every figure is the variant's teacher in the same run (its row); students are read as ratios
and differences against it.

    .venv/bin/python -m bench.bench_mtbench
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
HELD_BACK = 16


def _results() -> Path:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    return Path(os.environ.get("KEPT_BENCH_RESULTS") or ROOT / cfg["results"])


def _subject_words(question: str) -> list[str]:
    """Capitalised words of the question that are entity names (people, towns, extraction subjects)."""
    stop = {"Write", "Please", "Describe", "Pretend", "You", "Play", "Who", "Which", "What", "Compute", "Tell",
            "Run", "Read", "Here", "Text", "In", "Where", "When", "Why", "Now", "And", "How", "From", "Question",
            "Name", "I", "The"}
    return [w for w in re.findall(r"\b[A-Z][a-z]+\b", question) if w not in stop]


def answer_stats(answers: Path, questions: dict, rubrics: dict, judgments: Path, tokenizer, max_new: int) -> dict:
    from kept.world.judge import _has, degenerate

    scores = {}
    if judgments.is_file():
        for line in judgments.read_text().splitlines():
            r = json.loads(line)
            scores[(r["question_id"], r["turn"])] = r["score"]
    n = words = cut = degen = subject = any_req = forbidden = 0
    met_share = score_sum = 0.0
    for line in answers.read_text().splitlines():
        row = json.loads(line)
        qid = row["question_id"]
        subject_words = _subject_words(questions[qid]["turns"][0])
        for turn, text in enumerate(row["choices"][0]["turns"], start=1):
            rubric = rubrics[qid]["turns"][turn - 1]
            low = text.lower()
            n += 1
            words += len(text.split())
            cut += len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_new - 1
            degen += degenerate(text)
            subject += any(_has(low, w.lower()) for w in subject_words) if subject_words else 0
            met = [any(_has(low, alt) for alt in group) for group in rubric["required"]]
            any_req += any(met)
            met_share += sum(met) / max(len(met), 1)
            forbidden += any(_has(low, w) for w in rubric.get("forbidden", []))
            score_sum += scores.get((qid, turn), float("nan"))
    return {"turns": n, "words": round(words / n, 1), "cut %": round(100 * cut / n), "degenerate %": round(100 * degen / n),
            "names subject %": round(100 * subject / n), "any fact %": round(100 * any_req / n),
            "facts met": round(met_share / n, 2), "wrong fact %": round(100 * forbidden / n),
            "judge mean": round(score_sum / n, 2)}


@torch.inference_mode()
def reference_nll(model_dir: Path, questions: dict, rubrics: dict, fmt: str) -> float:
    """Mean NLL per token of the reference answers, teacher-forced in ``fmt``."""
    from kept.chat import render
    from kept.eval.common import load_eval_model, sequence_nll

    lm = load_eval_model(model_dir)
    total, count = 0.0, 0
    for qid, q in questions.items():
        history = []
        for turn, (ask, ref) in enumerate(zip(q["turns"], rubrics[qid]["answers"])):
            history.append({"role": "user", "content": ask})
            prompt = lm.encode_chat(render(history, fmt, add_generation_prompt=True))
            full = lm.encode_chat(render(history + [{"role": "assistant", "content": ref}], fmt,
                                         add_generation_prompt=False))
            nll = sequence_nll(lm, full)[len(prompt) - 1:]
            total += float(nll.sum())
            count += int(nll.numel())
            history.append({"role": "assistant", "content": ref})
    return total / count


def run(*, quick: bool = False) -> dict:
    from bench.bench_recovery import _domain_ids, _kl
    from kept.eval.common import load_eval_model
    from kept.train.data import PackedCorpus

    torch.set_num_threads(2)
    results = _results()
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    max_new = cfg["eval"]["mtbench"]["max_new_tokens"]
    qs = {json.loads(l)["question_id"]: json.loads(l) for l in
          (results / "eval_data" / "mtbench" / "question.jsonl").read_text().splitlines()}
    rubrics = {json.loads(l)["question_id"]: json.loads(l) for l in
               (results / "eval_data" / "mtbench" / "rubric.jsonl").read_text().splitlines()}
    corpus = PackedCorpus(results / "corpus")
    passages = corpus.get(list(range(len(corpus) - HELD_BACK, len(corpus))))
    dialogue = _domain_ids(results, "dialogue", HELD_BACK, corpus.max_length)
    rows = []
    for variant in ("base", "chat"):
        answers_dir = results / variant / "mtbench" / "model_answer"
        if not answers_dir.is_dir():
            continue
        teacher = results / "teachers" / variant
        tok = load_eval_model(teacher).tokenizer
        for path in sorted(answers_dir.glob("*.jsonl")):
            model, fmt = path.stem.rsplit("-", 1)
            if quick and model not in ("teacher", "xkd_z", "ut"):
                continue
            model_dir = teacher if model == "teacher" else results / variant / model / "model"
            row = {"variant": variant, "model": model, "format": fmt}
            row.update(answer_stats(path, qs, rubrics, results / variant / "mtbench" / "judgments" / path.name,
                                    tok, max_new))
            row["ref NLL"] = round(reference_nll(model_dir, qs, rubrics, fmt), 3)
            if model != "teacher":
                row["dialogue KL"] = round(_kl(teacher, model_dir, dialogue), 3)
                row["passage KL"] = round(_kl(teacher, model_dir, passages), 3)
            rows.append(row)
    notes = (f"Run: {results}. {len(qs)} questions x 2 turns per answer file; max_new_tokens {max_new}. "
             "'cut %' = answers that reached max_new_tokens; 'names subject %' = answers naming an entity of the "
             "first question; 'any fact %' / 'facts met' = required facts of the toy rubric; 'wrong fact %' = a "
             "forbidden word present; 'ref NLL' = NLL/token of the rubric's reference answers, teacher-forced in "
             f"the row's format; KL = mean per-token KL(teacher||model) on {HELD_BACK} x {corpus.max_length} tokens "
             "of training dialogues (Orion format) and of the transfer corpus's last sequences.")
    return {"title": "MT-Bench: what the answers contain and how far models are from the reference answers",
            "rows": rows, "notes": notes}


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
