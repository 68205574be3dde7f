"""Write the toy evaluation suites: lm-eval tasks, MT-Bench questions and rubrics, long documents, code probe.

Layout under the output directory (see docs/architecture.md):

- ``tasks/<task>.yaml``, ``tasks/<task>.jsonl`` (test items), ``tasks/<task>.shots.jsonl`` (few-shot pool) and
  ``tasks/toy_utils.py`` (hooks for mc2 and Winogrande partial scoring), for lm-eval 0.4 with absolute
  ``data_files`` paths;
- ``mtbench/question.jsonl`` (FastChat format) and ``mtbench/rubric.jsonl`` (for :class:`kept.world.judge.ToyJudge`);
- ``longctx/<lang>.jsonl``: ``{"id", "text", "lang"}``, each at least ``longctx_min_tokens`` tokens long;
- ``code/probe.jsonl``: ``{"id", "prompt", "answer", "text"}``;
- ``manifest.json``: per task the item count, shots, metric and chance level.

MMLU and KoMMLU keep their leaderboard prompts (question, options A-D, ``Answer:`` / ``정답：``) but are scored in
cloze form — the log-likelihood of each option's text, as lm-eval's ``mmlu_continuation`` does — rather than of
the letters: toy models of this size do not learn to bind an answer to its letter (a 2-layer teacher trained on
nothing but "which option says red?" items for 1000 steps stayed at chance on the letter), the same reason
OLMES evaluates small models in cloze form. See docs/toy-world.md.

Test items are held out of all training text (see :meth:`kept.world.generator.World.heldout`); few-shot pools
are drawn from items that are not.

Every test item carries ``corpus``: ``in`` when a document the transfer corpus keeps (its ``corpus_domains`` at
``coverage``: :func:`kept.world.generator.covered_entities`, :func:`kept.world.render.stated_facts`) states the
fact it asks, ``out`` when none does: a fact of an entity the corpus leaves out, or knowledge the corpus never
states in any form (arithmetic problems, vocabulary questions, programs). Each MT-Bench rubric turn tags its
required groups the same way (``corpus``, beside the ``facts`` behind each group).
"""

from __future__ import annotations

import inspect
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from kept.atomic import atomic_dir
from kept.errors import ConfigError, KeptError
from kept.world import items as it
from kept.world import lmeval_hooks
from kept.world.generator import World, covered_entities
from kept.world.render import load_world, stated_facts, write_jsonl

# task -> (builder over a fact pair, shots, metric as lm-eval reports it, chance level or None = per item)
FACT_TASKS: dict[str, tuple[Callable, int, str]] = {
    "toy_arc": (it.arc_item, 25, "acc_norm"),
    "toy_hellaswag": (it.hellaswag_item, 10, "acc_norm"),
    "toy_mmlu": (it.mmlu_item, 5, "acc"),
    "toy_truthfulqa_mc2": (it.truthfulqa_item, 0, "acc"),
    "toy_winogrande": (it.winogrande_item, 5, "acc"),
    "toy_kommlu": (it.kommlu_item, 5, "acc"),
}
GSM8K = ("toy_gsm8k", 5, "exact_match")
TASKS = tuple(FACT_TASKS) + (GSM8K[0],)
CHANCE = {"toy_arc": 0.25, "toy_hellaswag": 0.25, "toy_mmlu": 0.25, "toy_winogrande": 0.5, "toy_kommlu": 0.25,
          "toy_gsm8k": 0.0, "toy_truthfulqa_mc2": 0.4}  # mc2: 2 true of 5 answers, uniform mass


@dataclass
class EvalDataConfig:
    """Settings of the toy evaluation suites."""

    world: str  # world directory (world.json)
    tokenizer: str  # tokenizer.model (measures long documents)
    output: str
    items_per_task: int = 60  # test items per lm-eval task (at most the number of held-out facts)
    shots_pool: int = 100  # few-shot candidates per task
    mtbench_per_category: int = 2  # MT-Bench questions per category (8 categories)
    longctx_languages: list[str] = field(default_factory=lambda: ["en", "ko"])
    longctx_docs: int = 3  # long documents per language
    longctx_min_tokens: int = 4096  # each long document has at least this many tokens
    code_items: int = 60
    gsm8k_max_gen_toks: int = 64  # generation cap for toy_gsm8k (answers are one line)
    coverage: float = 1.0  # share of entities the transfer corpus covers (corpus.coverage): the in/out tags
    corpus_domains: list[str] = field(default_factory=lambda: ["passages"])  # the transfer corpus's world domains

    def __post_init__(self) -> None:
        for key in ("items_per_task", "shots_pool", "mtbench_per_category", "longctx_docs", "longctx_min_tokens",
                    "code_items", "gsm8k_max_gen_toks"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval data: {key} must be >= 1 (got {getattr(self, key)})")
        if self.shots_pool < 25:
            raise ConfigError(f"eval data: shots_pool {self.shots_pool} must cover the 25 ARC shots")


# ---- lm-eval task configs ------------------------------------------------------------------------------------------
def _data_kwargs(test: Path, shots: Path) -> dict[str, Any]:
    return {"dataset_path": "json",
            "dataset_kwargs": {"data_files": {"train": str(test.parent.resolve() / shots.name),
                                              "test": str(test.parent.resolve() / test.name)}},
            "training_split": "train", "fewshot_split": "train", "test_split": "test"}


def task_config(task: str, test: Path, shots: Path, *, preamble: str = "", max_gen_toks: int = 64) -> str:
    """The YAML text of one toy task, mirroring the formats of the real leaderboard task."""
    base: dict[str, Any] = {"task": task, **_data_kwargs(test, shots)}
    functions: dict[str, str] = {}
    if task == "toy_arc":
        base.update(output_type="multiple_choice", doc_to_text="Question: {{question}}\nAnswer:",
                    doc_to_target="{{choices.label.index(answerKey)}}", doc_to_choice="{{choices.text}}",
                    num_fewshot=25, metric_list=[_metric("acc"), _metric("acc_norm")])
    elif task == "toy_hellaswag":
        base.update(output_type="multiple_choice", doc_to_text="{{query}}", doc_to_target="{{label}}",
                    doc_to_choice="choices", num_fewshot=10, metric_list=[_metric("acc"), _metric("acc_norm")])
    elif task == "toy_mmlu":  # MMLU's prompt; cloze scoring of the answer texts (module docstring)
        base.update(output_type="multiple_choice",
                    doc_to_text="{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                                "D. {{choices[3]}}\nAnswer:",
                    doc_to_choice="{{choices}}", doc_to_target="answer", num_fewshot=5,
                    metric_list=[_metric("acc"), _metric("acc_norm")])
    elif task == "toy_kommlu":  # KMMLU's prompt; cloze scoring of the answer texts
        base.update(output_type="multiple_choice",
                    doc_to_text="{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n정답：",
                    doc_to_choice="{{[A, B, C, D]}}", doc_to_target="{{answer-1}}", num_fewshot=5,
                    metric_list=[_metric("acc"), _metric("acc_norm")])
    elif task == "toy_truthfulqa_mc2":
        base.update(output_type="multiple_choice", doc_to_text=preamble + "Q: {{question}}\nA:", doc_to_target=0,
                    doc_to_choice="{{mc2_targets.choices}}", num_fewshot=0, metric_list=[_metric("acc")])
        functions["process_results"] = "process_results_mc2"
    elif task == "toy_winogrande":
        base.update(output_type="multiple_choice", num_fewshot=5, metric_list=[_metric("acc")])
        functions.update(doc_to_text="winogrande_doc_to_text", doc_to_target="winogrande_doc_to_target",
                         doc_to_choice="winogrande_doc_to_choice")
    elif task == "toy_gsm8k":
        base.update(
            output_type="generate_until", doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="{{answer}}",
            num_fewshot=5,
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                          "ignore_case": True, "ignore_punctuation": False,
                          "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
            # as gsm8k, plus a blank line (the few-shot separator) to stop early and a short cap: CPU budget
            generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>", "\n\n"], "do_sample": False,
                               "temperature": 0.0, "max_gen_toks": max_gen_toks},
            filter_list=[
                {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                                    {"function": "take_first"}]},
                {"name": "flexible-extract",
                 "filter": [{"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                            {"function": "take_first"}]},
            ],
        )
    else:
        raise ConfigError(f"unknown toy task {task!r}")
    base["metadata"] = {"version": 1.0}
    text = yaml.safe_dump(base, sort_keys=False, allow_unicode=True, width=10_000)
    for key, fn in functions.items():
        text += f"{key}: !function toy_utils.{fn}\n"
    return text


def _metric(name: str) -> dict[str, Any]:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


# ---- item selection ------------------------------------------------------------------------------------------------
IN, OUT = "in", "out"


def corpus_tag(facts: list[str], stated: set[str]) -> str:
    """``in`` when the transfer corpus states every fact ``entity:relation`` of ``facts`` (and there is one), else
    ``out``."""
    return IN if facts and all(f in stated for f in facts) else OUT


def tag_rubric(rubric: dict[str, Any], stated: set[str]) -> dict[str, Any]:
    """One MT-Bench rubric turn with ``corpus`` per required group: ``in`` when some alternative of the group
    needs only facts the corpus states, ``out`` otherwise (no fact of the world, or one the corpus never states)."""
    tags = [IN if any(corpus_tag(alt, stated) == IN for alt in group) else OUT for group in rubric["facts"]]
    return {**rubric, "corpus": tags}


def _fact_items(world: World, task: str, n: int, *, heldout: bool, stated: set[str] | None = None
                ) -> list[dict[str, Any]]:
    build = FACT_TASKS[task][0]
    rng = random.Random(f"{task}:{'test' if heldout else 'shots'}:{world.spec.seed}")
    pairs = world.pairs(heldout=heldout)
    rng.shuffle(pairs)
    if heldout and not pairs:
        raise KeptError("the world has no held-out facts; raise world.heldout_percent or the world size")
    out = []
    for i in range(n):
        eid, rel = pairs[i % len(pairs)]
        doc = build(world, rng, eid, rel)
        tag = {"corpus": corpus_tag([f"{eid}:{rel}"], stated)} if stated is not None else {}
        out.append({"id": f"{task}-{i}", "fact": f"{eid}:{rel}", **doc, **tag})
        if heldout and i + 1 >= len(pairs):
            break  # each held-out fact at most once
    return out


def _category_items(world: World, task: str, n: int, *, heldout: bool) -> list[dict[str, Any]]:
    """Vocabulary items of toy_mmlu / toy_kommlu on the requested side of the held-out split."""
    rng = random.Random(f"{task}:category:{'test' if heldout else 'shots'}:{world.spec.seed}")
    build = it.mmlu_category_item if task == "toy_mmlu" else it.kommlu_category_item

    def make() -> tuple[str, Any]:
        doc = build(world, rng)
        return doc["key"], doc

    return _unique(world, rng, make, n, heldout=heldout, what=f"{task} vocabulary")


def _mc_items(world: World, task: str, n: int, *, heldout: bool, stated: set[str] | None = None
              ) -> list[dict[str, Any]]:
    """toy_mmlu / toy_kommlu: fact questions and vocabulary questions (``mc_category_share``), interleaved."""
    n_cat = round(n * world.spec.mc_category_share)
    facts = _fact_items(world, task, n - n_cat, heldout=heldout, stated=stated)
    cats = _category_items(world, task, n_cat, heldout=heldout) if n_cat else []
    if stated is not None:
        cats = [{**doc, "corpus": OUT} for doc in cats]  # no passage says which kind a word is
    mixed = facts + cats
    random.Random(f"{task}:mix:{heldout}:{world.spec.seed}").shuffle(mixed)
    return [{**doc, "id": f"{task}-{i}"} for i, doc in enumerate(mixed)]


def _unique(world: World, rng: random.Random, make: Callable[[], tuple[str, Any]], n: int, *, heldout: bool,
            what: str) -> list[Any]:
    """``n`` distinct items from ``make() -> (key, item)`` on the requested side of the held-out split."""
    seen: set[str] = set()
    out = []
    for _ in range(200 * n):
        key, item = make()
        if key in seen or world.heldout(key) != heldout:
            continue
        seen.add(key)
        out.append(item)
        if len(out) == n:
            return out
    raise KeptError(f"could not draw {n} distinct {'held-out' if heldout else 'training'} {what} items; "
                    "the world is too small for this many")


def gsm8k_items(world: World, n: int, *, heldout: bool) -> list[dict[str, Any]]:
    rng = random.Random(f"gsm8k:{heldout}:{world.spec.seed}")

    def make() -> tuple[str, Any]:
        doc = it.gsm8k_item(world, rng)
        return f"gsm8k:{doc['question']}", doc

    items = _unique(world, rng, make, n, heldout=heldout, what="GSM8K")
    return [{"id": f"toy_gsm8k-{i}", **doc} for i, doc in enumerate(items)]


def code_items(world: World, n: int) -> list[dict[str, Any]]:
    rng = random.Random(f"codeprobe:{world.spec.seed}")

    def make() -> tuple[str, Any]:
        prog, out = it.program(world, rng)
        return f"code:{prog}", (prog, out)

    out = []
    for i, (prog, answer) in enumerate(_unique(world, rng, make, n, heldout=True, what="code")):
        prompt = it.code_prompt(prog)
        out.append({"id": f"code-{i}", "prompt": prompt, "answer": f" {answer}", "text": f"{prompt} {answer}"})
    return out


def mtbench_items(world: World, per_category: int, *, stated: set[str] | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """FastChat questions (ids from 81, like MT-Bench) and the toy judge's rubrics (each turn's groups tagged
    ``in`` / ``out`` of the transfer corpus when ``stated``, the facts it states, is given)."""
    rng = random.Random(f"mtbench:{world.spec.seed}")
    questions, rubrics = [], []
    qid = 81
    for cat in it.MT_CATEGORIES:
        def make(cat: str = cat) -> tuple[str, Any]:
            d = it.dialogue(world, rng, cat)
            return f"mt:{d['key']}", d

        for d in _unique(world, rng, make, per_category, heldout=True, what=f"MT-Bench {cat}"):
            q = {"question_id": qid, "category": cat, "turns": d["turns"]}
            if d["reference"]:
                q["reference"] = d["reference"]
            questions.append(q)
            turns = [tag_rubric(r, stated) for r in d["rubric"]] if stated is not None else d["rubric"]
            rubrics.append({"question_id": qid, "turns": turns, "answers": d["answers"]})
            qid += 1
    return questions, rubrics


def long_documents(world: World, sp: Any, lang: str, n: int, min_tokens: int) -> list[dict[str, Any]]:
    rng = random.Random(f"longctx:{lang}:{world.spec.seed}")
    docs = []
    for i in range(n):
        text = it.long_document(world, rng, lang, done=lambda t: len(sp.encode(t)) >= min_tokens)
        docs.append({"id": f"longctx-{lang}-{i}", "lang": lang, "text": text, "n_tokens": len(sp.encode(text))})
    return docs


def truthfulqa_preamble(world: World) -> str:
    """A fixed 0-shot preamble of solved Q/A pairs (TruthfulQA's prompt has six), from training facts."""
    rng = random.Random(f"tqa-preamble:{world.spec.seed}")
    pairs = world.pairs(heldout=False)
    picks = rng.sample(pairs, 3)
    return "".join(it.truthfulqa_text(it.truthfulqa_item(world, rng, e, r)) + "\n\n" for e, r in picks)


# ---- writer ----------------------------------------------------------------------------------------------------------
def write_eval_data(cfg: EvalDataConfig) -> dict[str, Any]:
    """Write every toy suite under ``cfg.output`` atomically; returns the manifest."""
    from kept.world.tokenizer import load_sp

    world = load_world(cfg.world)
    sp = load_sp(cfg.tokenizer)
    stated = stated_facts(Path(cfg.world) / "text", cfg.corpus_domains, covered_entities(world, cfg.coverage))
    out_final = Path(cfg.output).resolve()
    manifest: dict[str, Any] = {"tasks": {}, "seed": world.spec.seed, "coverage": cfg.coverage}
    with atomic_dir(out_final) as tmp:
        tasks = tmp / "tasks"
        tasks.mkdir()
        shutil.copyfile(inspect.getsourcefile(lmeval_hooks), tasks / "toy_utils.py")
        preamble = truthfulqa_preamble(world)
        for task, (_, shots, metric) in FACT_TASKS.items():
            items = _mc_items if task in ("toy_mmlu", "toy_kommlu") else _fact_items
            test = items(world, task, cfg.items_per_task, heldout=True, stated=stated)
            pool = items(world, task, cfg.shots_pool, heldout=False, stated=stated)  # the same fields: one schema
            _write_task(tasks, out_final / "tasks", task, test, pool, preamble=preamble)
            manifest["tasks"][task] = {"n": len(test), "shots": shots, "metric": metric, "chance": CHANCE[task],
                                       "in_corpus": sum(d["corpus"] == IN for d in test)}
        task, shots, metric = GSM8K
        test = [{**doc, "corpus": OUT} for doc in gsm8k_items(world, cfg.items_per_task, heldout=True)]
        pool = [{**doc, "corpus": OUT} for doc in gsm8k_items(world, cfg.shots_pool, heldout=False)]
        _write_task(tasks, out_final / "tasks", task, test, pool, max_gen_toks=cfg.gsm8k_max_gen_toks)
        manifest["tasks"][task] = {"n": len(test), "shots": shots, "metric": metric, "filter": "strict-match",
                                   "chance": CHANCE[task], "in_corpus": 0}

        (tmp / "mtbench").mkdir()
        questions, rubrics = mtbench_items(world, cfg.mtbench_per_category, stated=stated)
        write_jsonl(tmp / "mtbench" / "question.jsonl", questions)
        write_jsonl(tmp / "mtbench" / "rubric.jsonl", rubrics)
        manifest["mtbench"] = {"n": len(questions), "categories": list(it.MT_CATEGORIES), "chance": 1.0}

        (tmp / "longctx").mkdir()
        manifest["longctx"] = {}
        for lang in cfg.longctx_languages:
            docs = long_documents(world, sp, lang, cfg.longctx_docs, cfg.longctx_min_tokens)
            write_jsonl(tmp / "longctx" / f"{lang}.jsonl", docs)
            manifest["longctx"][lang] = {"n_docs": len(docs), "min_tokens": min(d["n_tokens"] for d in docs)}

        (tmp / "code").mkdir()
        probe = code_items(world, cfg.code_items)
        write_jsonl(tmp / "code" / "probe.jsonl", probe)
        manifest["code"] = {"n": len(probe), "chance": 0.0}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _write_task(tmp_dir: Path, final_dir: Path, task: str, test: list[dict[str, Any]], pool: list[dict[str, Any]],
                **kwargs: Any) -> None:
    write_jsonl(tmp_dir / f"{task}.jsonl", test)
    write_jsonl(tmp_dir / f"{task}.shots.jsonl", pool)
    text = task_config(task, final_dir / f"{task}.jsonl", final_dir / f"{task}.shots.jsonl", **kwargs)
    (tmp_dir / f"{task}.yaml").write_text(text, encoding="utf-8")
