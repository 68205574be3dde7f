"""Training text of a world, by domain, and the ``world`` step that writes it with the ground truth.

Domains (``text/{domain}.jsonl`` under the world directory, one ``{"id", "lang", "text", ...}`` per line):

- ``passages``: encyclopedic passages, every fact in every language (also carry ``title``); the transfer corpus
  of the toy config is packed from these, as MIRACL is for the paper;
- ``quiz``: runs of solved items in the evaluation formats, over items that are not held out;
- ``dialogue``: two-turn Human/Assistant exchanges in Orion's chat format (kept.chat.render);
- ``code``: small programs followed by their output (never in the transfer corpus);
- ``longdoc``: long ledgers whose dependencies reach far back (for the LongChat teacher).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from kept.atomic import atomic_dir
from kept.chat import render
from kept.errors import KeptError
from kept.world import items as it
from kept.world import lexicon as lx
from kept.world.generator import World, WorldSpec, build_world, passage

DOMAINS: tuple[str, ...] = ("passages", "quiz", "dialogue", "code", "longdoc")

# Quiz formats over a fact pair: name -> (builder, renderer, language). Weights come from WorldSpec.quiz_weights.
_FACT_FORMATS: dict[str, tuple[Callable, Callable, str]] = {
    "arc": (it.arc_item, it.arc_text, "en"),
    "mmlu": (it.mmlu_item, it.mmlu_text, "en"),
    "kommlu": (it.kommlu_item, it.kommlu_text, "ko"),
    "truthfulqa": (it.truthfulqa_item, it.truthfulqa_text, "en"),
    "hellaswag": (it.hellaswag_item, it.hellaswag_text, "en"),
    "winogrande": (it.winogrande_item, it.winogrande_text, "en"),
}


def _train_pair(world: World, rng: random.Random) -> tuple[str, str]:
    while True:
        eid, rel = rng.choice(world.fact_pairs())
        if not world.heldout(f"fact:{eid}:{rel}"):
            return eid, rel


def quiz_doc(world: World, rng: random.Random) -> dict[str, Any]:
    """A run of 3-10 solved items of one format, separated by blank lines as in a few-shot prompt."""
    names = sorted(world.spec.quiz_weights)
    fmt = rng.choices(names, [world.spec.quiz_weights[n] for n in names])[0]
    texts = []
    for _ in range(rng.randint(3, 10)):
        if fmt == "gsm8k":
            doc = it.gsm8k_item(world, rng)
            while world.heldout(f"gsm8k:{doc['question']}"):
                doc = it.gsm8k_item(world, rng)
            texts.append(it.gsm8k_text(doc))
        elif fmt in ("mmlu", "kommlu") and rng.random() < world.spec.mc_category_share:
            build = it.mmlu_category_item if fmt == "mmlu" else it.kommlu_category_item
            doc = build(world, rng)
            while world.heldout(doc["key"]):
                doc = build(world, rng)
            texts.append(_FACT_FORMATS[fmt][1](doc))
        else:
            build, text, _ = _FACT_FORMATS[fmt]
            texts.append(text(build(world, rng, *_train_pair(world, rng))))
    lang = "en" if fmt == "gsm8k" else _FACT_FORMATS[fmt][2]
    return {"lang": lang, "format": fmt, "text": "\n\n".join(texts)}


def chat_text(turns: list[str], answers: list[str]) -> str:
    messages = []
    for q, a in zip(turns, answers):
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return render(messages, "orion")


def dialogue_doc(world: World, rng: random.Random) -> dict[str, Any]:
    """A two-turn exchange: an MT-Bench-category dialogue (English) or, one time in five, Korean fact QA."""
    if rng.random() < 0.2:
        pairs = [_train_pair(world, rng) for _ in range(2)]
        turns = [it.question_ko(world, rng, e, r) for e, r in pairs]
        answers = [world.statement(e, r, "ko", rng.randrange(3)) for e, r in pairs]
        return {"lang": "ko", "category": "qa", "text": chat_text(turns, answers)}
    for _ in range(10_000):  # a category can run out of training items in a tiny world: redraw it too
        d = it.dialogue(world, rng, rng.choice(it.MT_CATEGORIES))
        if not world.heldout(f"mt:{d['key']}") and not any(world.heldout(f"fact:{e}:{r}") for e, r in d["asks"]):
            return {"lang": "en", "category": d["category"], "text": chat_text(d["turns"], d["answers"])}
    raise KeptError("world: no training dialogue left outside the held-out split; enlarge the world")


def code_doc(world: World, rng: random.Random) -> dict[str, Any]:
    """A few small programs, each followed by ``# Output: ...``."""
    parts = []
    for _ in range(rng.randint(3, 8)):
        prog, out = it.program(world, rng)
        while world.heldout(f"code:{prog}"):
            prog, out = it.program(world, rng)
        parts.append(f"{it.code_prompt(prog)} {out}")
    return {"lang": "code", "text": "\n\n".join(parts)}


def training_text(world: World) -> dict[str, list[dict[str, Any]]]:
    """Every domain's training documents, deterministic from the world's seed."""
    spec = world.spec
    out: dict[str, list[dict[str, Any]]] = {d: [] for d in DOMAINS}
    rng = random.Random(f"passages:{spec.seed}")
    for eid in world.cities + world.people:
        for lang in lx.LANGS:
            for i in range(spec.passages_per_entity):
                out["passages"].append({"id": f"{eid}-{lang}-{i}", "lang": lang, **passage(world, rng, eid, lang)})
    rng = random.Random(f"quiz:{spec.seed}")
    out["quiz"] = [{"id": f"quiz-{i}", **quiz_doc(world, rng)} for i in range(spec.quiz_docs)]
    rng = random.Random(f"dialogue:{spec.seed}")
    out["dialogue"] = [{"id": f"dialogue-{i}", **dialogue_doc(world, rng)} for i in range(spec.dialogues)]
    rng = random.Random(f"code:{spec.seed}")
    n_code = max(1, spec.programs // 5)
    out["code"] = [{"id": f"code-{i}", **code_doc(world, rng)} for i in range(n_code)]
    rng = random.Random(f"longdoc:{spec.seed}")
    for lang in lx.LANGS:
        for i in range(spec.long_docs):
            text = it.long_document(world, rng, lang, done=lambda t: len(t) >= spec.long_doc_chars)
            out["longdoc"].append({"id": f"long-{lang}-{i}", "lang": lang, "text": text})
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")


def load_world(directory: str | Path) -> World:
    """The world saved under ``directory`` (its ``world.json``)."""
    path = Path(directory) / "world.json"
    if not path.is_file():
        raise KeptError(f"{path}: missing world.json (run the world step first)")
    try:
        return World(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KeptError(f"{path}: not a world file ({exc})") from exc


def write_world(*, spec: WorldSpec, output: str | Path) -> dict[str, int]:
    """Generate the world of ``spec`` and write ``world.json`` and ``text/{domain}.jsonl`` atomically.

    Returns the number of documents per domain.
    """
    data = build_world(spec)
    world = World(data)
    text = training_text(world)
    data["heldout_facts"] = [f"{e}:{r}" for e, r in world.pairs(heldout=True)]
    with atomic_dir(output) as tmp:
        (tmp / "world.json").write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                        encoding="utf-8")
        (tmp / "text").mkdir()
        for domain, records in text.items():
            write_jsonl(tmp / "text" / f"{domain}.jsonl", records)
    return {d: len(r) for d, r in text.items()}
