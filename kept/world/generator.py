"""The toy world: entities, facts and their renderings, deterministic from a seed.

A world is a set of people and towns. Every person has a home town, a job, a pet, a favourite colour, a
favourite food, an age and a best friend; every town has a region, a famous food and a founding year. The facts
are the ground truth (``world.json``) and are rendered as text in English, Korean, Chinese and Japanese.

Held-out items: every item that an evaluation can ask (a question about one fact, an arithmetic problem, a
program, an MT-Bench question) has a string key, and :meth:`World.heldout` splits keys by a seeded hash. Training
text only renders items whose key is not held out; evaluation suites only ask held-out items. Facts are shared
(every fact is stated in the encyclopedic passages), items are not.

Coverage: the transfer corpus may state the facts of only some entities (:func:`covered_entities`, a share of the
people and of the towns); every rendered document records in ``states`` the facts (``entity:relation``) it states
and in ``about`` their entities, so the corpus can leave out every document about an uncovered entity, and the
suites tag each item by whether a document the corpus keeps states the fact it asks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from kept.errors import ConfigError
from kept.world import lexicon as lx


QUIZ_WEIGHTS = {"arc": 2.0, "mmlu": 3.0, "kommlu": 3.0, "truthfulqa": 1.0, "hellaswag": 1.5, "winogrande": 1.0,
                "gsm8k": 2.0}


@dataclass(frozen=True)
class WorldSpec:
    """Size and seed of a generated world."""

    seed: int = 1234
    n_people: int = 40
    n_cities: int = 10
    heldout_percent: int = 25  # share of item keys kept out of all training text
    passages_per_entity: int = 6  # renderings of each entity's passage per language
    quiz_docs: int = 1200  # documents in the evaluation formats, over non-held-out items
    dialogues: int = 800  # two-turn Human/Assistant exchanges
    programs: int = 800  # small programs with their printed output
    long_docs: int = 4  # long training documents per language (LongChat)
    long_doc_chars: int = 6000  # approximate length of a long training document, in characters
    # relative frequency of each evaluation format among the quiz documents
    quiz_weights: dict[str, float] = field(default_factory=lambda: dict(QUIZ_WEIGHTS))
    # share of vocabulary ("which of these is a colour?") items among the MMLU/KoMMLU-format items, the rest
    # being fact questions; both in training text and in the test sets
    mc_category_share: float = 0.5

    def __post_init__(self) -> None:
        unknown = sorted(set(self.quiz_weights) - set(QUIZ_WEIGHTS))
        if unknown or not any(v > 0 for v in self.quiz_weights.values()) or min(self.quiz_weights.values()) < 0:
            raise ConfigError(f"world: quiz_weights {self.quiz_weights} must give non-negative weights to formats "
                              f"among {sorted(QUIZ_WEIGHTS)}, some positive")
        if not 0.0 <= self.mc_category_share <= 1.0:
            raise ConfigError(f"world: mc_category_share must be in [0, 1] (got {self.mc_category_share})")
        if self.n_people < 8 or self.n_cities < 4:
            raise ConfigError(f"world: n_people must be >= 8 and n_cities >= 4 (got {self.n_people}, {self.n_cities})")
        if not 5 <= self.heldout_percent <= 60:
            raise ConfigError(f"world: heldout_percent must be in [5, 60] (got {self.heldout_percent})")
        for key in ("passages_per_entity", "quiz_docs", "dialogues", "programs", "long_docs", "long_doc_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"world: {key} must be >= 1 (got {getattr(self, key)})")


def _unique_names(rng: random.Random, n: int, taken: set[str]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    while len(out) < n:
        syl = [(rng.choice(lx.CONSONANTS), rng.choice(lx.VOWELS)) for _ in range(rng.choice((2, 3)))]
        key = lx.spell(syl, "en")
        if key in taken:
            continue
        taken.add(key)
        out.append(syl)
    return out


def build_world(spec: WorldSpec) -> dict[str, Any]:
    """The ground truth of a world: entities with names in every language, facts, and the spec."""
    rng = random.Random(f"world:{spec.seed}")
    taken: set[str] = set()
    city_syl = _unique_names(rng, spec.n_cities, taken)
    person_syl = _unique_names(rng, spec.n_people, taken)
    entities: dict[str, dict[str, Any]] = {}
    cities = [f"c{i:02d}" for i in range(spec.n_cities)]
    people = [f"p{i:02d}" for i in range(spec.n_people)]
    for eid, syl in zip(cities, city_syl):
        entities[eid] = {
            "kind": "city",
            "names": {lang: lx.spell(syl, lang) for lang in lx.LANGS},
            "facts": {
                "region": rng.choice(sorted(lx.VALUES["region"])),
                "famous": rng.choice(sorted(lx.VALUES["food"])),
                "founded": rng.randrange(1100, 1900),
            },
        }
    for eid, syl in zip(people, person_syl):
        entities[eid] = {
            "kind": "person",
            "names": {lang: lx.spell(syl, lang) for lang in lx.LANGS},
            "facts": {
                "city": rng.choice(cities),
                "job": rng.choice(sorted(lx.VALUES["job"])),
                "pet": rng.choice(sorted(lx.VALUES["pet"])),
                "color": rng.choice(sorted(lx.VALUES["color"])),
                "food": rng.choice(sorted(lx.VALUES["food"])),
                "age": rng.randrange(18, 90),
                "friend": rng.choice([p for p in people if p != eid]),
            },
        }
    return {"version": 1, "spec": dataclasses.asdict(spec), "entities": entities}


class World:
    """Read access to a world's facts and their renderings."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.spec = WorldSpec(**data["spec"])
        self.entities: dict[str, dict[str, Any]] = data["entities"]
        self.people = sorted(e for e, v in self.entities.items() if v["kind"] == "person")
        self.cities = sorted(e for e, v in self.entities.items() if v["kind"] == "city")

    # ---- split ---------------------------------------------------------------------------------------
    def heldout(self, key: str) -> bool:
        """Whether the item ``key`` is reserved for evaluation (never rendered in training text)."""
        digest = hashlib.sha256(f"{self.spec.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < self.spec.heldout_percent

    def fact_pairs(self) -> list[tuple[str, str]]:
        """Every (entity, relation) pair, in a fixed order."""
        pairs = []
        for eid in self.cities + self.people:
            rels = lx.CITY_RELATIONS if self.entities[eid]["kind"] == "city" else lx.PERSON_RELATIONS
            pairs.extend((eid, rel) for rel in rels)
        return pairs

    def pairs(self, *, heldout: bool) -> list[tuple[str, str]]:
        return [p for p in self.fact_pairs() if self.heldout(f"fact:{p[0]}:{p[1]}") == heldout]

    # ---- rendering -----------------------------------------------------------------------------------
    def name(self, eid: str, lang: str) -> str:
        return self.entities[eid]["names"][lang]

    def value(self, eid: str, rel: str) -> Any:
        return self.entities[eid]["facts"][rel]

    def word(self, rel: str, value: Any, lang: str) -> str:
        """The surface form of a relation's object ``value`` (an entity id, a value key or a number)."""
        kind = lx.OBJECT_KIND[rel]
        if kind in ("city", "person"):
            return self.name(value, lang)
        if kind == "number":
            return str(value)
        return lx.VALUES[kind][value][lang]

    def obj(self, eid: str, rel: str, lang: str) -> str:
        return self.word(rel, self.value(eid, rel), lang)

    def fill(self, template: str, s: str, o: str, lang: str) -> str:
        fields = {"s": s, "o": o}
        if lang == "ko":
            fields.update(lx.korean_forms(s, o))
        return template.format(**fields)

    def statement(self, eid: str, rel: str, lang: str, variant: int = 0, value: Any = None) -> str:
        """One sentence stating the fact (or, with ``value``, stating that value instead)."""
        o = self.obj(eid, rel, lang) if value is None else self.word(rel, value, lang)
        templates = lx.STATEMENTS[rel][lang]
        return self.fill(templates[variant % len(templates)], self.name(eid, lang), o, lang)

    def distractors(self, rng: random.Random, eid: str, rel: str, n: int) -> list[Any]:
        """``n`` wrong values of the same kind as the true object of (eid, rel)."""
        true = self.value(eid, rel)
        kind = lx.OBJECT_KIND[rel]
        if kind == "city":
            pool = [c for c in self.cities if c != true]
        elif kind == "person":
            pool = [p for p in self.people if p not in (true, eid)]
        elif kind == "number":
            lo, hi = (18, 90) if rel == "age" else (1100, 1900)
            pool = [v for v in range(lo, hi) if v != true]
        else:
            pool = [v for v in sorted(lx.VALUES[kind]) if v != true]
        return rng.sample(pool, n)


def join_sentences(sentences: list[str], lang: str) -> str:
    """Join sentences the way each script does (no spaces in Chinese and Japanese)."""
    return ("" if lang in ("zh", "ja") else " ").join(sentences)


def covered_entities(world: World, coverage: float) -> set[str]:
    """The entities whose facts the transfer corpus states: ``round(coverage * n)`` of the people and as many of
    the towns (at least one of each while ``coverage`` > 0), chosen by a shuffle seeded with the world's seed, so
    the corpus and the suites agree on the split without sharing a file."""
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"corpus coverage must be in (0, 1], got {coverage!r}")
    rng = random.Random(f"coverage:{world.spec.seed}")
    out: set[str] = set()
    for pool in (world.people, world.cities):
        order = list(pool)
        rng.shuffle(order)
        out.update(order[: max(1, round(coverage * len(order)))])
    return out


def passage(world: World, rng: random.Random, eid: str, lang: str) -> dict[str, Any]:
    """An encyclopedic passage about one entity: an introduction, then every fact in a random order and wording.
    ``states`` lists the facts it states and ``about`` their entities (a town's passage also states where some
    residents live)."""
    ent = world.entities[eid]
    rels = list(lx.CITY_RELATIONS if ent["kind"] == "city" else lx.PERSON_RELATIONS)
    rng.shuffle(rels)
    name = world.name(eid, lang)
    intro = world.fill(rng.choice(lx.INTRO[ent["kind"]][lang]), name, "", lang)
    body = [world.statement(eid, rel, lang, rng.randrange(3)) for rel in rels]
    about, states = [eid], [f"{eid}:{rel}" for rel in rels]
    if ent["kind"] == "city":  # towns list some residents, which ties the two kinds of entity together
        residents = [p for p in world.people if world.value(p, "city") == eid]
        for p in rng.sample(residents, min(2, len(residents))):
            body.append(world.statement(p, "city", lang, rng.randrange(3)))
            about.append(p)
            states.append(f"{p}:city")
    return {"title": name, "text": join_sentences([intro] + body, lang), "about": about, "states": states}
