"""The toy world: generator, held-out split, tokenizer, evaluation suites (run by the real lm-eval), toy judge,
determinism, and bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from kept.errors import ConfigError, KeptError
from kept.world import items as it
from kept.world.evaldata import TASKS, EvalDataConfig, write_eval_data
from kept.world.generator import World, WorldSpec, build_world
from kept.world.judge import ToyJudge, score_answer
from kept.jsonl import read_jsonl
from kept.world.render import DOMAINS, load_world, write_world
from kept.world.tokenizer import load_sp, train_tokenizer

SMALL = dict(n_people=12, n_cities=4, heldout_percent=30, passages_per_entity=2, quiz_docs=150, dialogues=80,
             programs=60, long_docs=1, long_doc_chars=1500)
SCRIPTS = {"en": r"^[A-Z][a-z]+$", "ko": r"^[\uac00-\ud7a3]+$", "zh": r"^[\u4e00-\u9fff]+$", "ja": r"^[\u30a0-\u30ff]+$"}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small world, its tokenizer and its eval suites."""
    root = tmp_path_factory.mktemp("world")
    write_world(spec=WorldSpec(seed=7, **SMALL), output=root / "world")
    train_tokenizer(text_files=[root / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                    output=root / "tokenizer" / "tokenizer.model", vocab_size=1000)
    cfg = EvalDataConfig(world=str(root / "world"), tokenizer=str(root / "tokenizer" / "tokenizer.model"),
                         output=str(root / "eval_data"), items_per_task=8, shots_pool=30, mtbench_per_category=1,
                         longctx_docs=1, longctx_min_tokens=600, code_items=8)
    manifest = write_eval_data(cfg)
    return {"root": root, "world": load_world(root / "world"), "manifest": manifest, "cfg": cfg}


# ---- generator ---------------------------------------------------------------------------------------------
def test_names_use_each_language_script_and_facts_appear_in_every_language(built):
    world: World = built["world"]
    passages = read_jsonl(built["root"] / "world" / "text" / "passages.jsonl")
    for eid in world.cities + world.people:
        for lang, pattern in SCRIPTS.items():
            assert re.match(pattern, world.name(eid, lang)), (eid, lang, world.name(eid, lang))
    # every fact is stated, in its language's words, in each language's passages about the entity
    for eid in world.people[:4]:
        for lang in SCRIPTS:
            text = " ".join(p["text"] for p in passages if p["id"].startswith(f"{eid}-{lang}-"))
            assert text, (eid, lang)
            for rel in ("job", "pet", "color", "food", "age", "city"):
                assert world.obj(eid, rel, lang) in text, (eid, lang, rel)


def test_world_is_deterministic_and_seed_dependent():
    a = build_world(WorldSpec(seed=3, **SMALL))
    assert a == build_world(WorldSpec(seed=3, **SMALL))
    assert a["entities"] != build_world(WorldSpec(seed=4, **SMALL))["entities"]


def test_korean_particles_follow_the_final_consonant():
    from kept.world.lexicon import ko_particle

    assert ko_particle("카미로", "은/는") == "카미로는"
    assert ko_particle("빵", "을/를") == "빵을"
    assert ko_particle("사과", "을/를") == "사과를"


def test_test_items_are_held_out_of_training_text_but_their_facts_are_not(built):
    root, world = built["root"], built["world"]
    text = {d: "\n".join(r["text"] for r in read_jsonl(root / "world" / "text" / f"{d}.jsonl")) for d in DOMAINS}
    everything = "\n".join(text.values())
    tasks = root / "eval_data" / "tasks"
    renderers = {"toy_arc": it.arc_text, "toy_mmlu": it.mmlu_text, "toy_kommlu": it.kommlu_text,
                 "toy_hellaswag": it.hellaswag_text, "toy_winogrande": it.winogrande_text,
                 "toy_truthfulqa_mc2": it.truthfulqa_text, "toy_gsm8k": it.gsm8k_text}
    held = set(world.data["heldout_facts"])
    for task, render in renderers.items():
        docs = read_jsonl(tasks / f"{task}.jsonl")
        assert len(docs) == 8, task
        for doc in docs:
            assert render(doc) not in everything, (task, render(doc))
            if "fact" in doc:
                assert doc["fact"] in held, (task, doc["fact"])
            else:  # a vocabulary item of toy_mmlu / toy_kommlu
                assert task in ("toy_mmlu", "toy_kommlu", "toy_gsm8k") and world.heldout(doc.get("key", "gsm8k:" + doc.get("question", "")))
    # a held-out fact's question never appears, but the fact itself is stated in the passages
    passages = read_jsonl(root / "world" / "text" / "passages.jsonl")
    for key in held:
        eid, rel = key.split(":")
        about = " ".join(p["text"] for p in passages if p["id"].startswith(f"{eid}-en-"))
        assert world.obj(eid, rel, "en") in about, key
    # no question about a held-out fact, in any wording, is in the training text
    from kept.world import lexicon as lx

    for key in held:
        eid, rel = key.split(":")
        for tpl in lx.QUESTIONS_EN[rel]:
            assert world.fill(tpl, world.name(eid, "en"), "", "en") not in everything, (key, tpl)
        for tpl in lx.QUESTIONS_KO[rel]:
            assert world.fill(tpl, world.name(eid, "ko"), "", "ko") not in everything, (key, tpl)
    # every free item in the training text (problems, programs, dialogue openings) is on the training side
    for rec in read_jsonl(root / "world" / "text" / "quiz.jsonl"):
        if rec["format"] == "gsm8k":
            for item in rec["text"].split("\n\n"):
                question = item.split("\n")[0].removeprefix("Question: ")
                assert not world.heldout(f"gsm8k:{question}"), question
    for rec in read_jsonl(root / "world" / "text" / "dialogue.jsonl"):
        if rec["category"] != "qa":
            q1 = rec["text"].removeprefix("<s>Human: ").split("\n\nAssistant:")[0]
            assert not world.heldout(f"mt:{rec['category']}:{q1}"), q1
    for q in read_jsonl(root / "eval_data" / "mtbench" / "question.jsonl"):
        assert q["turns"][0] not in text["dialogue"]
    for probe in read_jsonl(root / "eval_data" / "code" / "probe.jsonl"):
        assert probe["prompt"] not in text["code"]
        assert probe["text"] == probe["prompt"] + probe["answer"]


# ---- tokenizer ---------------------------------------------------------------------------------------------
def test_tokenizer_ids_byte_fallback_digits_and_roundtrip(built):
    sp = load_sp(built["root"] / "tokenizer" / "tokenizer.model")
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    for text in ["x = 12\n    print(x)\n# Output: 12", "카미로는 빵을 좋아한다.\n\n卡米罗。カミロ", "€ ☃ unseen"]:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert 0 not in ids  # byte fallback: nothing maps to <unk>
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]


def test_hf_tokenizer_matches_sentencepiece_on_world_text(built, tmp_path):
    import shutil

    from kept.tokenizer import load_hf_tokenizer

    shutil.copyfile(built["root"] / "tokenizer" / "tokenizer.model", tmp_path / "tokenizer.model")
    hf, sp = load_hf_tokenizer(tmp_path), load_sp(tmp_path)
    for d in ("passages", "quiz", "code", "longdoc"):
        for rec in read_jsonl(built["root"] / "world" / "text" / f"{d}.jsonl")[:20]:
            assert hf(rec["text"], add_special_tokens=False)["input_ids"] == sp.encode(rec["text"]), d


# ---- eval suites -------------------------------------------------------------------------------------------
def test_manifest_and_formats(built):
    ed = built["root"] / "eval_data"
    m = built["manifest"]
    assert set(m["tasks"]) == set(TASKS)
    assert {k: v["shots"] for k, v in m["tasks"].items()} == {
        "toy_arc": 25, "toy_hellaswag": 10, "toy_mmlu": 5, "toy_truthfulqa_mc2": 0, "toy_winogrande": 5,
        "toy_gsm8k": 5, "toy_kommlu": 5}
    for task in TASKS:
        assert len(read_jsonl(ed / "tasks" / f"{task}.shots.jsonl")) == 30
        text = (ed / "tasks" / f"{task}.yaml").read_text()
        assert str((ed / "tasks" / f"{task}.jsonl").resolve()) in text  # absolute data_files
    for q in read_jsonl(ed / "mtbench" / "question.jsonl"):
        assert set(q) <= {"question_id", "category", "turns", "reference"} and len(q["turns"]) == 2
    assert sorted({q["category"] for q in read_jsonl(ed / "mtbench" / "question.jsonl")}) == sorted(it.MT_CATEGORIES)
    sp = load_sp(built["root"] / "tokenizer" / "tokenizer.model")
    for lang in ("en", "ko"):
        docs = read_jsonl(ed / "longctx" / f"{lang}.jsonl")
        assert docs and all(d["lang"] == lang and len(sp.encode(d["text"])) >= 600 for d in docs)
    kommlu = read_jsonl(ed / "tasks" / "toy_kommlu.jsonl")
    assert all(re.search(r"[\uac00-\ud7a3]", d["question"]) for d in kommlu)


def test_every_task_loads_in_lm_eval(built):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(built["root"] / "eval_data" / "tasks"), include_defaults=False)
    loaded = tm.load(list(TASKS))["tasks"]
    assert set(loaded) == set(TASKS)
    for name, task in loaded.items():
        docs = list(task.eval_docs)
        assert len(docs) == 8, name
        assert task.config.num_fewshot == built["manifest"]["tasks"][name]["shots"]


@pytest.mark.slow
def test_real_lm_eval_runs_toy_tasks_on_a_tiny_random_teacher(built, tmp_path):
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kept.models import load_model, load_tokenizer
    from kept.orion import new_orion_model, save_orion_checkpoint

    tok = built["root"] / "tokenizer" / "tokenizer.model"
    torch.manual_seed(0)
    model = new_orion_model({"vocab_size": load_sp(tok).get_piece_size(), "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 1024})
    save_orion_checkpoint(model, tmp_path / "teacher", tokenizer_model=tok, num_shards=1)
    lm = HFLM(pretrained=load_model(tmp_path / "teacher"), tokenizer=load_tokenizer(tmp_path / "teacher"),
              batch_size=4, trust_remote_code=False)
    tm = TaskManager(include_path=str(built["root"] / "eval_data" / "tasks"), include_defaults=False)
    tasks = ["toy_arc", "toy_gsm8k", "toy_winogrande", "toy_truthfulqa_mc2"]
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=2, bootstrap_iters=0)["results"]
    assert 0.0 <= out["toy_arc"]["acc_norm,none"] <= 1.0
    assert 0.0 <= out["toy_winogrande"]["acc,none"] <= 1.0
    assert 0.0 < out["toy_truthfulqa_mc2"]["acc,none"] < 1.0  # a probability mass, not a 0/1 score
    assert "exact_match,strict-match" in out["toy_gsm8k"]


# ---- judge -------------------------------------------------------------------------------------------------
def test_toy_judge_scores_from_facts(built):
    ed = built["root"] / "eval_data" / "mtbench"
    judge = ToyJudge(ed / "rubric.jsonl")
    rubrics = read_jsonl(ed / "rubric.jsonl")
    for rec in rubrics:
        for turn in (1, 2):
            assert judge.score(rec["question_id"], turn, rec["answers"][turn - 1]) == 10
            assert judge.score(rec["question_id"], turn, "") == 1
            assert judge.score(rec["question_id"], turn, "the the the the the the the the the the the the") == 1
    writing = next(r for r in rubrics if r["question_id"] == 81)
    wrong = writing["turns"][0]["forbidden"][0]
    assert score_answer(writing["turns"][0], f"It lives in {wrong}.") == 1  # no fact right, one wrong
    with pytest.raises(KeptError, match="question_id 999"):
        judge.score(999, 1, "x")
    with pytest.raises(KeptError, match="turn"):
        judge.score(81, 3, "x")


def test_judge_partial_credit():
    rubric = {"required": [["Dorla"], ["baker"], ["cat"]], "forbidden": ["dog"]}
    assert score_answer(rubric, "Kamiro lives in Dorla and is a baker with a cat.") == 10
    assert score_answer(rubric, "Kamiro lives in Dorla.") == 4
    assert score_answer(rubric, "Kamiro lives in Dorla, is a baker and has a dog.") == 4
    assert score_answer(rubric, "Kamiro lives in Dorlaville.") == 1  # word boundaries


# ---- determinism -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_gives_byte_identical_world_tokenizer_and_eval_files(tmp_path):
    def build(seed: int) -> dict[str, str]:
        out = tmp_path / "run"  # same path each time: the task YAMLs hold absolute paths
        write_world(spec=WorldSpec(seed=seed, **SMALL), output=out / "world")
        train_tokenizer(text_files=[out / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                        output=out / "tok" / "tokenizer.model", vocab_size=1000)
        write_eval_data(EvalDataConfig(world=str(out / "world"), tokenizer=str(out / "tok" / "tokenizer.model"),
                                       output=str(out / "eval"), items_per_task=5, shots_pool=25,
                                       mtbench_per_category=1, longctx_docs=1, longctx_min_tokens=300,
                                       code_items=5))
        digest = _tree_digest(out)
        import shutil

        shutil.rmtree(out)
        return digest

    first = build(11)
    assert len(first) > 20
    assert build(11) == first
    other = build(12)
    assert other["tok/tokenizer.model"] != first["tok/tokenizer.model"]
    assert other["eval/tasks/toy_arc.jsonl"] != first["eval/tasks/toy_arc.jsonl"]


# ---- bad inputs --------------------------------------------------------------------------------------------
def test_bad_settings_and_inputs_fail_clearly_and_leave_nothing(tmp_path):
    with pytest.raises(ConfigError, match="n_people"):
        WorldSpec(n_people=2)
    with pytest.raises(ConfigError, match="quiz_weights"):
        WorldSpec(quiz_weights={"nonsense": 1.0})
    with pytest.raises(KeptError, match="world.json"):
        load_world(tmp_path)
    bad = tmp_path / "text.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(KeptError, match=r"text.jsonl:2"):
        train_tokenizer(text_files=[bad], output=tmp_path / "tok" / "tokenizer.model", vocab_size=400)
    assert not (tmp_path / "tok" / "tokenizer.model").exists()
    write_world(spec=WorldSpec(seed=1, **SMALL), output=tmp_path / "world")
    with pytest.raises(KeptError, match="missing SentencePiece model"):
        write_eval_data(EvalDataConfig(world=str(tmp_path / "world"), tokenizer=str(tmp_path / "none.model"),
                                       output=str(tmp_path / "eval")))
    assert not (tmp_path / "eval").exists()
    with pytest.raises(ConfigError, match="shots_pool"):
        EvalDataConfig(world="w", tokenizer="t", output="o", shots_pool=5)
