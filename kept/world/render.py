"""Training text of a world, by domain, and the ``world`` step that writes it with the ground truth.

Domains (``text/{domain}.jsonl`` under the world directory, one ``{"id", "lang", "text", ...}`` per line):

- ``passages``: encyclopedic passages, every fact in every language (also carry ``title``); the transfer corpus
  of the toy config is packed from these, as MIRACL is for the paper;
- ``quiz``: runs of solved items in the evaluation formats, over items that are not held out;
- ``dialogue``: two-turn Human/Assistant exchanges in Orion's chat format (kept.chat.render);
- ``code``: small programs followed by their output (never in the transfer corpus);
- ``longdoc``: long ledgers whose dependencies reach far back (for the LongChat teacher).

Every record carries ``states``, the facts (``entity:relation``) its text states, and ``about``, their entities
(what the transfer corpus's coverage filters on; :func:`stated_facts`). ``text/heldout/{domain}.jsonl`` holds fresh renderings of every domain from other seeds (same facts,
same training-side items, new documents; a tenth of the counts), which no teacher trains on: the held-out
pretraining mixture of the regime check (kept.eval.mixture).
"""

from __future__ import annotations

import json
import random
import re
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
    texts, states = [], []
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
            eid, rel = _train_pair(world, rng)
            texts.append(text(build(world, rng, eid, rel)))
            states.append(f"{eid}:{rel}")
    lang = "en" if fmt == "gsm8k" else _FACT_FORMATS[fmt][2]
    return {"lang": lang, "format": fmt, "text": "\n\n".join(texts), **_stating(states)}


_CODE_DICTS = {"pets": "pet", "jobs": "job", "colors": "color", "foods": "food"}  # kept.world.items.program


def _stating(states: list[str]) -> dict[str, list[str]]:
    """A record's ``states`` (the facts it states, each once, in order) and ``about`` (their entities)."""
    states = list(dict.fromkeys(states))
    return {"states": states, "about": sorted({f.split(":", 1)[0] for f in states})}


def stated_facts(text_dir: str | Path, domains: list[str], covered: set[str]) -> set[str]:
    """The facts the documents of ``domains`` under ``text_dir`` state that a corpus covering the entities
    ``covered`` keeps (every document whose ``about`` lies within them): what such a transfer corpus states."""
    from kept.jsonl import read_jsonl

    out: set[str] = set()
    for domain in domains:
        path = Path(text_dir) / f"{domain}.jsonl"
        for i, rec in enumerate(read_jsonl(path, what="world text"), start=1):
            if not isinstance(rec.get("states"), list) or not isinstance(rec.get("about"), list):
                raise KeptError(f"{path}:{i}: record without 'states' / 'about' (rebuild the world)")
            if set(rec["about"]) <= covered:
                out.update(rec["states"])
    return out


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
        return {"lang": "ko", "category": "qa", "text": chat_text(turns, answers),
                **_stating([f"{e}:{r}" for e, r in pairs])}
    for _ in range(10_000):  # a category can run out of training items in a tiny world: redraw it too
        d = it.dialogue(world, rng, rng.choice(it.MT_CATEGORIES))
        if not world.heldout(f"mt:{d['key']}") and not any(world.heldout(f"fact:{e}:{r}") for e, r in d["asks"]):
            return {"lang": "en", "category": d["category"], "text": chat_text(d["turns"], d["answers"]),
                    **_stating(d["states"])}
    raise KeptError("world: no training dialogue left outside the held-out split; enlarge the world")


def code_doc(world: World, rng: random.Random) -> dict[str, Any]:
    """A few small programs, each followed by ``# Output: ...``."""
    parts = []
    for _ in range(rng.randint(3, 8)):
        prog, out = it.program(world, rng)
        while world.heldout(f"code:{prog}"):
            prog, out = it.program(world, rng)
        parts.append(f"{it.code_prompt(prog)} {out}")
    text = "\n\n".join(parts)
    # dictionary lookups state people's pets, jobs, colours and foods: `pets = {"Kamiro": "cat", ...}`
    states = [f"{p}:{_CODE_DICTS[m.group(1)]}" for m in re.finditer(r"^(\w+) = \{(.*)\}$", text, re.M)
              if m.group(1) in _CODE_DICTS for p in world.people if f'"{world.name(p, "en")}":' in m.group(2)]
    return {"lang": "code", "text": text, **_stating(states)}


def training_text(world: World, *, heldout: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every domain's training documents, deterministic from the world's seed; ``heldout``: the held-out
    renderings (other seeds, a tenth of the documents, at least one per entity, language and domain)."""
    spec = world.spec
    tag = "heldout-" if heldout else ""

    def count(n: int) -> int:
        return max(1, n // 10) if heldout else n

    out: dict[str, list[dict[str, Any]]] = {d: [] for d in DOMAINS}
    rng = random.Random(f"{tag}passages:{spec.seed}")
    for eid in world.cities + world.people:
        for lang in lx.LANGS:
            for i in range(count(spec.passages_per_entity)):
                out["passages"].append({"id": f"{tag}{eid}-{lang}-{i}", "lang": lang, **passage(world, rng, eid, lang)})
    rng = random.Random(f"{tag}quiz:{spec.seed}")
    out["quiz"] = [{"id": f"{tag}quiz-{i}", **quiz_doc(world, rng)} for i in range(count(spec.quiz_docs))]
    rng = random.Random(f"{tag}dialogue:{spec.seed}")
    out["dialogue"] = [{"id": f"{tag}dialogue-{i}", **dialogue_doc(world, rng)} for i in range(count(spec.dialogues))]
    rng = random.Random(f"{tag}code:{spec.seed}")
    n_code = max(1, count(spec.programs) // 5)
    out["code"] = [{"id": f"{tag}code-{i}", **code_doc(world, rng)} for i in range(n_code)]
    rng = random.Random(f"{tag}longdoc:{spec.seed}")
    for lang in lx.LANGS:
        for i in range(max(1, spec.long_docs // 4) if heldout else spec.long_docs):
            states: list[str] = []
            text = it.long_document(world, rng, lang, done=lambda t: len(t) >= spec.long_doc_chars, states=states)
            out["longdoc"].append({"id": f"{tag}long-{lang}-{i}", "lang": lang, "text": text, **_stating(states)})
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
    heldout = training_text(world, heldout=True)
    data["heldout_facts"] = [f"{e}:{r}" for e, r in world.pairs(heldout=True)]
    with atomic_dir(output) as tmp:
        (tmp / "world.json").write_text(json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                        encoding="utf-8")
        (tmp / "text" / "heldout").mkdir(parents=True)
        for domain, records in text.items():
            write_jsonl(tmp / "text" / f"{domain}.jsonl", records)
            write_jsonl(tmp / "text" / "heldout" / f"{domain}.jsonl", heldout[domain])
    return {d: len(r) for d, r in text.items()}
