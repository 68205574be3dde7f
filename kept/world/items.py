"""Items in the formats of the evaluation suites, built from a world's facts.

The same builders make the training text (over items that are not held out) and the evaluation suites (over
held-out items), so the teacher learns each format on other items and is tested on new ones. Record fields
mirror the real datasets (ARC, HellaSwag, MMLU, TruthfulQA-mc2, Winogrande, GSM8K, KMMLU, MT-Bench), and each
``*_text`` function renders a solved item exactly as lm-eval renders a few-shot example.
"""

from __future__ import annotations

import random
from typing import Any

from kept.world import lexicon as lx
from kept.world.generator import World, join_sentences

LETTERS = ("A", "B", "C", "D")


def _choices(world: World, rng: random.Random, eid: str, rel: str, lang: str) -> tuple[list[str], int]:
    values = [world.value(eid, rel)] + world.distractors(rng, eid, rel, 3)
    order = list(range(4))
    rng.shuffle(order)
    words = [world.word(rel, values[i], lang) for i in order]
    return words, order.index(0)


def question_en(world: World, rng: random.Random, eid: str, rel: str) -> str:
    return world.fill(rng.choice(lx.QUESTIONS_EN[rel]), world.name(eid, "en"), "", "en")


def question_ko(world: World, rng: random.Random, eid: str, rel: str) -> str:
    return world.fill(rng.choice(lx.QUESTIONS_KO[rel]), world.name(eid, "ko"), "", "ko")


# ---- ARC (25-shot, acc_norm) ------------------------------------------------------------------------------
def arc_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    words, gold = _choices(world, rng, eid, rel, "en")
    return {"question": question_en(world, rng, eid, rel),
            "choices": {"text": words, "label": list(LETTERS)}, "answerKey": LETTERS[gold]}


def arc_text(doc: dict[str, Any]) -> str:
    gold = doc["choices"]["label"].index(doc["answerKey"])
    return f"Question: {doc['question']}\nAnswer: {doc['choices']['text'][gold]}"


# ---- MMLU (5-shot, acc) -------------------------------------------------------------------------------------
def _kind_words(world: World, kind: str, lang: str) -> list[str]:
    if kind == "city":
        return [world.name(c, lang) for c in world.cities]
    if kind == "person":
        return [world.name(p, lang) for p in world.people]
    return [lx.VALUES[kind][v][lang] for v in sorted(lx.VALUES[kind])]


def category_choices(world: World, rng: random.Random, lang: str) -> tuple[str, list[str], int, str]:
    """A vocabulary question: one word of the asked kind among words of three other kinds.
    Returns (question, choices, index of the answer, held-out key)."""
    kinds = rng.sample(sorted(lx.CATEGORY_QUESTIONS), 4)
    words = [rng.choice(_kind_words(world, k, lang)) for k in kinds]
    order = list(range(4))
    rng.shuffle(order)
    choices = [words[i] for i in order]
    question = lx.CATEGORY_QUESTIONS[kinds[0]][lang]
    return question, choices, order.index(0), f"category:{lang}:{question}:{'|'.join(choices)}"



def mmlu_category_item(world: World, rng: random.Random) -> dict[str, Any]:
    question, choices, gold, key = category_choices(world, rng, "en")
    return {"question": question, "subject": "category", "choices": choices, "answer": gold, "key": key}


def kommlu_category_item(world: World, rng: random.Random) -> dict[str, Any]:
    question, choices, gold, key = category_choices(world, rng, "ko")
    return {"question": question, "subject": "category", "answer": gold + 1, **dict(zip(LETTERS, choices)),
            "key": key}


def mmlu_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    words, gold = _choices(world, rng, eid, rel, "en")
    return {"question": question_en(world, rng, eid, rel), "subject": rel, "choices": words, "answer": gold}


def mmlu_text(doc: dict[str, Any]) -> str:
    """MMLU's prompt (options listed) answered in cloze form: the answer text, not its letter (see evaldata)."""
    opts = "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, doc["choices"]))
    return f"{doc['question'].strip()}{opts}\nAnswer: {doc['choices'][doc['answer']]}"


# ---- KoMMLU (5-shot, acc; KMMLU's record format and prompt) -------------------------------------------------
def kommlu_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    words, gold = _choices(world, rng, eid, rel, "ko")
    doc = {"question": question_ko(world, rng, eid, rel), "subject": rel, "answer": gold + 1}
    doc.update(dict(zip(LETTERS, words)))
    return doc


def kommlu_text(doc: dict[str, Any]) -> str:
    """KMMLU's prompt (options listed) answered in cloze form: the answer text, not its letter (see evaldata)."""
    opts = "".join(f"\n{L}. {doc[L]}" for L in LETTERS)
    return f"{doc['question'].strip()}{opts}\n정답： {doc[LETTERS[doc['answer'] - 1]]}"


# ---- TruthfulQA mc2 (0-shot; several true answers) ----------------------------------------------------------
def truthfulqa_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    variants = rng.sample(range(3), 2)
    true = [world.statement(eid, rel, "en", v) for v in variants]
    false = [world.statement(eid, rel, "en", rng.randrange(3), value=w)
             for w in world.distractors(rng, eid, rel, 3)]
    return {"question": question_en(world, rng, eid, rel),
            "mc2_targets": {"choices": true + false, "labels": [1] * len(true) + [0] * len(false)}}


def truthfulqa_text(doc: dict[str, Any]) -> str:
    return f"Q: {doc['question']}\nA: {doc['mc2_targets']['choices'][0]}"


# ---- HellaSwag (10-shot, acc_norm) ----------------------------------------------------------------------------
# relation -> (activity label, context with {s}, ending with {o})
_STORY = {
    "city": ("Travel", "{s} packs a bag after a long trip. At last, {s}", "comes back home to {o}."),
    "job": ("Work", "{s} wakes up early on Monday. After breakfast, {s}", "goes to work as a {o}."),
    "pet": ("Home", "{s} hears a noise in the garden. Smiling, {s}", "goes out to feed the pet {o}."),
    "color": ("Painting", "{s} buys new paint for the house. Then {s}", "paints the front door {o}."),
    "food": ("Cooking", "{s} is hungry at noon. So {s}", "sits down to eat some {o}."),
    "age": ("Birthday", "Today is the birthday of {s}. The cake shows that {s}", "is now {o} years old."),
    "friend": ("Friends", "{s} has a free afternoon. Happily, {s}", "goes to visit {o}."),
    "region": ("Travel", "A traveller walks to {s}. To get there, the traveller", "heads to the {o} of the land."),
    "famous": ("Market", "Visitors come to {s} every week. In the market they", "buy the famous {o}."),
    "founded": ("History", "An old stone stands in {s}. The stone says that the town", "was founded in {o}."),
}


def hellaswag_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    label, ctx, ending = _STORY[rel]
    s = world.name(eid, "en")
    words, gold = _choices(world, rng, eid, rel, "en")
    return {"query": f"{label}: {ctx.format(s=s)}", "choices": [ending.format(o=w) for w in words], "label": gold}


def hellaswag_text(doc: dict[str, Any]) -> str:
    return f"{doc['query']} {doc['choices'][doc['label']]}"


# ---- Winogrande (5-shot, acc, partial scoring) --------------------------------------------------------------
_PREDICATE = {
    "city": "lives in {o}.", "job": "works as a {o}.", "pet": "has a pet {o}.",
    "color": "likes the colour {o} best.", "food": "likes to eat {o}.", "age": "is {o} years old.",
    "friend": "is good friends with {o}.", "region": "lies in the {o} of the land.",
    "famous": "is famous for its {o}.", "founded": "was founded in the year {o}.",
}
_OPENERS = ("{a} and {b} are neighbours, but only _ {p}", "{a} met {b} at the market, and _ {p}",
            "Between {a} and {b}, it is _ who {p}")


def winogrande_item(world: World, rng: random.Random, eid: str, rel: str) -> dict[str, Any]:
    true = world.value(eid, rel)
    pool = world.cities if world.entities[eid]["kind"] == "city" else world.people
    others = [e for e in pool if e != eid and world.value(e, rel) != true and e != true]
    other = rng.choice(others)
    a, b = world.name(eid, "en"), world.name(other, "en")
    opener = rng.choice(_OPENERS if world.entities[eid]["kind"] == "person" else _OPENERS[:1])
    pred = _PREDICATE[rel].format(o=world.word(rel, true, "en"))
    first = rng.random() < 0.5
    opt1, opt2 = (a, b) if first else (b, a)
    pair = (a, b) if rng.random() < 0.5 else (b, a)
    sentence = opener.format(a=pair[0], b=pair[1], p=pred)
    return {"sentence": sentence, "option1": opt1, "option2": opt2, "answer": "1" if first else "2"}


def winogrande_text(doc: dict[str, Any]) -> str:
    return doc["sentence"].replace("_", doc["option1"] if doc["answer"] == "1" else doc["option2"])


# ---- GSM8K (5-shot, exact match on "#### n") -----------------------------------------------------------------
_THINGS = ("apples", "eggs", "coins", "books", "shells", "stamps", "pencils", "cups")


def gsm8k_item(world: World, rng: random.Random) -> dict[str, Any]:
    s, t = (world.name(p, "en") for p in rng.sample(world.people, 2))
    thing = rng.choice(_THINGS)
    op = rng.choice(("add", "sub", "mul"))
    if op == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = a + b
        q = f"{s} has {a} {thing}. {t} gives {s} {b} more {thing}. How many {thing} does {s} have now?"
        ans = f"{s} has {a} + {b} = {c} {thing} now."
    elif op == "sub":
        c, b = rng.randint(1, 9), rng.randint(1, 9)
        a = c + b
        q = f"{s} has {a} {thing} and gives {b} of them to {t}. How many {thing} does {s} have left?"
        ans = f"{s} has {a} - {b} = {c} {thing} left."
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = a * b
        q = f"{s} buys {a} bags with {b} {thing} in each bag. How many {thing} does {s} buy?"
        ans = f"{s} buys {a} * {b} = {c} {thing}."
    return {"question": q, "answer": f"{ans}\n#### {c}"}


def gsm8k_text(doc: dict[str, Any]) -> str:
    return f"Question: {doc['question']}\nAnswer: {doc['answer']}"


# ---- code (probe: perplexity and answer accuracy) ------------------------------------------------------------
def program(world: World, rng: random.Random) -> tuple[str, str]:
    """A small Python program and what it prints."""
    kind = rng.randrange(8)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if kind == 0:
        op = rng.choice("+-*")
        out = {"+": a + b, "-": a - b, "*": a * b}[op]
        return f"x = {a}\ny = {b}\nprint(x {op} y)", str(out)
    if kind == 1:
        rel = rng.choice(("pet", "job", "color", "food"))
        people = rng.sample(world.people, 3)
        var = {"pet": "pets", "job": "jobs", "color": "colors", "food": "foods"}[rel]
        pairs = ", ".join(f'"{world.name(p, "en")}": "{world.obj(p, rel, "en")}"' for p in people)
        pick = rng.choice(people)
        return f'{var} = {{{pairs}}}\nprint({var}["{world.name(pick, "en")}"])', world.obj(pick, rel, "en")
    if kind == 2:
        word = lx.syllable(rng.choice(lx.CONSONANTS), rng.choice(lx.VOWELS), "en")
        k = rng.randint(2, 4)
        return f'print("{word}" * {k})', word * k
    if kind == 3:
        items = [rng.randint(0, 9) for _ in range(rng.randint(1, 6))]
        return f"items = {items}\nprint(len(items))", str(len(items))
    if kind == 4:
        items = [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
        fn = rng.choice(("max", "min"))
        return f"print({fn}({items}))", str(max(items) if fn == "max" else min(items))
    if kind == 5:
        word = rng.choice(("big", "large", "high"))
        other = {"big": "small", "large": "tiny", "high": "low"}[word]
        return (f'x = {a}\nif x > {b}:\n    print("{word}")\nelse:\n    print("{other}")',
                word if a > b else other)
    if kind == 6:
        n, k = rng.randint(1, 4), rng.randint(1, 4)
        return f"total = 0\nfor i in range({n}):\n    total += {k}\nprint(total)", str(n * k)
    return f"def f(x):\n    return x + {b}\n\nprint(f({a}))", str(a + b)


def code_prompt(prog: str) -> str:
    return f"{prog}\n# Output:"


# ---- dialogues / MT-Bench ------------------------------------------------------------------------------------
MT_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def _words(world: World, rel: str, exclude: Any) -> list[str]:
    kind = lx.OBJECT_KIND[rel]
    if kind in ("city", "person"):
        pool = world.cities if kind == "city" else world.people
        return [world.name(e, "en") for e in pool if e != exclude]
    return [lx.VALUES[kind][v]["en"] for v in sorted(lx.VALUES[kind]) if v != exclude]


def _fact_check(world: World, eid: str, rel: str) -> dict[str, Any]:
    true = world.value(eid, rel)
    forbidden = _words(world, rel, true) if lx.OBJECT_KIND[rel] != "number" else []
    return {"required": [[world.word(rel, true, "en")]], "forbidden": forbidden, "facts": [[[f"{eid}:{rel}"]]]}


def _merge(*checks: dict[str, Any]) -> dict[str, Any]:
    return {"required": [alt for c in checks for alt in c["required"]],
            "forbidden": sorted({w for c in checks for w in c["forbidden"]}),
            "facts": [f for c in checks for f in c["facts"]]}


def _no_fact(required: list[list[str]], forbidden: list[str]) -> dict[str, Any]:
    """A rubric turn whose groups ask no fact of the world (arithmetic, a program's output, a given text)."""
    return {"required": required, "forbidden": forbidden, "facts": [[] for _ in required]}


def dialogue(world: World, rng: random.Random, category: str) -> dict[str, Any]:
    """A two-turn exchange of one MT-Bench category: ``key`` (held-out split), ``turns``, ``answers``,
    ``rubric`` (per turn: ``required`` groups of alternatives, ``forbidden`` words, ``facts``: per group the
    facts ``entity:relation`` behind each alternative, [] where the group asks no fact of the world),
    ``reference``, ``asks`` (the (entity, relation) facts its questions ask) and ``about`` (the entities whose
    facts its answers state) and ``states`` (those facts, ``entity:relation``)."""
    v = rng.randrange(3)
    ref = None
    asks: list[tuple[str, str]] = []  # facts the questions ask (training dialogues ask no held-out fact)
    states: list[tuple[str, str]] = []  # facts the answers state
    if category == "writing":
        p = rng.choice(world.people)
        s = world.name(p, "en")
        q1 = [f"Write a short note about {s}.", f"Please write a few sentences about {s}.",
              f"Describe {s} in a short paragraph."][v]
        a1 = join_sentences([f"{s} is a person of the land."]
                            + [world.statement(p, r, "en", 0) for r in ("city", "job", "pet")], "en")
        q2, a2 = f"Now also say what {s} likes to eat.", world.statement(p, "food", "en", 0)
        r1 = _merge(*(_fact_check(world, p, r) for r in ("city", "job", "pet")))
        r2 = _fact_check(world, p, "food")
        states = [(p, r) for r in ("city", "job", "pet", "food")]
    elif category == "roleplay":
        p = rng.choice(world.people)
        s = world.name(p, "en")
        q1 = [f"Pretend you are {s}. Where do you live?", f"You are {s} now. Tell me where your home is.",
              f"Play the role of {s}. In which town do you live?"][v]
        a1 = f"I am {s}, and I live in {world.obj(p, 'city', 'en')}."
        q2, a2 = "And what is your job?", f"I work as a {world.obj(p, 'job', 'en')}."
        r1, r2 = _fact_check(world, p, "city"), _fact_check(world, p, "job")
        asks = [(p, "city"), (p, "job")]
        states = list(asks)
    elif category == "reasoning":
        p, o = rng.sample(world.people, 2)
        while world.value(p, "age") == world.value(o, "age"):
            p, o = rng.sample(world.people, 2)
        sp, so = world.name(p, "en"), world.name(o, "en")
        ap, ao = world.value(p, "age"), world.value(o, "age")
        old, young = (sp, so) if ap > ao else (so, sp)
        q1 = [f"Who is older, {sp} or {so}?", f"Which of {sp} and {so} is older?",
              f"{sp} and {so}: who is the older one?"][v]
        a1 = f"{old} is older. {sp} is {ap} years old and {so} is {ao} years old."
        q2 = f"How many years older is {old}?"
        a2 = f"{old} is {abs(ap - ao)} years older than {young}."
        ages = [[[f"{p}:age", f"{o}:age"]]]  # both ages are needed to answer either turn
        r1 = {"required": [[f"{old} is older"]], "forbidden": [f"{young} is older"], "facts": ages}
        r2 = {"required": [[str(abs(ap - ao))]], "forbidden": [], "facts": ages}
        ref = [a1, a2]
        asks = [(p, "age"), (o, "age")]
        states = list(asks)
    elif category == "math":
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        q1 = [f"What is {a} + {b}?", f"Please add {a} and {b}.", f"Compute {a} + {b}."][v]
        a1 = f"{a} + {b} = {a + b}."
        q2, a2 = f"Now add {c} to the result.", f"{a + b} + {c} = {a + b + c}."
        r1, r2 = _no_fact([[f"= {a + b}"]], []), _no_fact([[f"= {a + b + c}"]], [])
        ref = [a1, a2]
    elif category == "coding":
        a, b, a2_ = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        op = rng.choice("+*")
        f = (lambda x: x + b) if op == "+" else (lambda x: x * b)
        prog = f"x = {a}\nprint(x {op} {b})"
        q1 = [f"What does this program print?\n{prog}", f"Tell me the output of this code:\n{prog}",
              f"Run this Python program in your head:\n{prog}"][v]
        a1 = f"It prints {f(a)}."
        q2, a2 = f"What does it print if x is {a2_} instead?", f"Then it prints {f(a2_)}."
        r1, r2 = _no_fact([[f"prints {f(a)}"]], []), _no_fact([[f"prints {f(a2_)}"]], [])
        ref = [a1, a2]
    elif category == "extraction":
        syl = [(rng.choice(lx.CONSONANTS), rng.choice(lx.VOWELS)) for _ in range(3)]
        s = lx.spell(syl, "en")
        job, pet = rng.choice(sorted(lx.VALUES["job"])), rng.choice(sorted(lx.VALUES["pet"]))
        jw, pw = lx.VALUES["job"][job]["en"], lx.VALUES["pet"][pet]["en"]
        text = f"{s} works as a {jw}. {s} has a pet {pw}."
        q1 = [f"Read the text and answer. Text: {text} Question: What is the job of {s}?",
              f"Here is a text: {text} What does {s} do for work?",
              f"Text: {text} From the text, what is the job of {s}?"][v]
        a1, q2, a2 = f"The job of {s} is {jw}.", f"What pet does {s} have?", f"{s} has a pet {pw}."
        r1 = _no_fact([[jw]], [w for w in _words(world, "job", job)])  # the answer is in the given text
        r2 = _no_fact([[pw]], [w for w in _words(world, "pet", pet)])
    elif category == "stem":
        c = rng.choice(world.cities)
        n = world.name(c, "en")
        q1 = [f"In which part of the land is {n}?", f"Where does the town of {n} lie?",
              f"Tell me where {n} is."][v]
        a1, q2 = world.statement(c, "region", "en", 0), f"When was {n} founded?"
        a2 = world.statement(c, "founded", "en", 0)
        r1 = _fact_check(world, c, "region")
        r2 = {"required": [[str(world.value(c, "founded"))]], "forbidden": [], "facts": [[[f"{c}:founded"]]]}
        asks = [(c, "region"), (c, "founded")]
        states = list(asks)
    elif category == "humanities":
        c = rng.choice([c for c in world.cities if any(world.value(p, "city") == c for p in world.people)])
        n = world.name(c, "en")
        q1 = [f"What is {n} famous for?", f"Why do people visit {n}?", f"What is special about the town {n}?"][v]
        a1, q2 = world.statement(c, "famous", "en", 0), f"Name a person who lives in {n}."
        residents = [p for p in world.people if world.value(p, "city") == c]
        named = rng.choice(residents)
        a2 = world.statement(named, "city", "en", 0)
        r1 = _fact_check(world, c, "famous")
        r2 = {"required": [[world.name(p, "en") for p in residents]], "forbidden": [],
              "facts": [[[f"{p}:city"] for p in residents]]}  # any resident answers it
        asks = [(c, "famous")]
        states = [(c, "famous"), (named, "city")]
    else:
        raise ValueError(f"unknown MT-Bench category {category!r}")
    key = f"{category}:{q1}"  # the item is its first question: no training dialogue opens the same way
    return {"category": category, "key": key, "turns": [q1, q2], "answers": [a1, a2],
            "rubric": [r1, r2], "reference": ref, "asks": asks,
            "about": sorted({e for e, _ in states}), "states": [f"{e}:{r}" for e, r in states]}


# ---- long documents ------------------------------------------------------------------------------------------
_LEDGER = {
    "en": ("Records of the town of {t}.", "Locker {k} holds the code {v}.", "Note again: locker {k} holds the code {v}."),
    "ko": ("{t} 마을의 기록.", "{k}번 사물함의 암호는 {v}이다.", "다시 적는다: {k}번 사물함의 암호는 {v}이다."),
    "zh": ("{t}城的记录。", "{k}号柜子的密码是{v}。", "再记一次：{k}号柜子的密码是{v}。"),
    "ja": ("{t}の町の記録。", "{k}番のロッカーの暗証番号は{v}だ。", "もう一度書く：{k}番のロッカーの暗証番号は{v}だ。"),
}


def long_document(world: World, rng: random.Random, lang: str, *, done, states: list[str] | None = None) -> str:
    """A ledger whose lockers get random codes early and are recalled far later, between encyclopedic passages.

    The codes are random per document, so predicting a recalled code needs the distant definition in context.
    ``done(text) -> bool`` says when the document is long enough; ``states`` (if given) receives the facts the
    passages in it state.
    """
    from kept.world.generator import passage

    head, define, recall = _LEDGER[lang]
    paras = [head.format(t=world.name(rng.choice(world.cities), lang))]
    codes: dict[int, int] = {}
    while True:
        r = rng.random()
        if r < 0.3 or not codes:
            k = rng.randrange(100, 1000)
            while k in codes:
                k = rng.randrange(100, 1000)
            codes[k] = rng.randrange(1000, 10000)
            paras.append(define.format(k=k, v=codes[k]))
        elif r < 0.55:
            k = rng.choice(sorted(codes))
            paras.append(recall.format(k=k, v=codes[k]))
        else:
            found = passage(world, rng, rng.choice(world.cities + world.people), lang)
            paras.append(found["text"])
            if states is not None:
                states.extend(found["states"])
        if len(paras) % 8 == 0 and done("\n\n".join(paras)):
            return "\n\n".join(paras)
