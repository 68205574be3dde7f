# Helpers of the data rules (included by rules/data.smk): config views, toy-variant checks, input functions.
# Functions only (no rules), so the rule file stays declarative (snakemake --lint).

WORLD = config["world"]
CORPUS = config["corpus"]
TOY_VARIANTS = [v for v in VARIANTS if source_kind(v) == "toy"]

for _v in TOY_VARIANTS:
    if _v not in WORLD["teachers"]:
        raise ValueError(f"variant {_v!r} has source kind 'toy' but world.teachers has no recipe for it")
    _family = WORLD["teachers"][_v].get("family", "orion")
    _declared = variant_cfg(_v)["source"].get("family")
    if _declared is not None and _declared != _family:
        raise ValueError(f"variants.{_v}.source.family {_declared!r} disagrees with world.teachers.{_v}.family "
                         f"{_family!r} (the recipe decides a toy teacher's family; drop the variant's key or match it)")
    if _family != "orion" and WORLD["teachers"][_v]["role"] != "base":
        raise ValueError(f"world.teachers.{_v}.family {_family!r}: non-Orion toy teachers are base recipes only "
                         f"(role {WORLD['teachers'][_v]['role']!r})")
    if _family != "orion" and variant_cfg(_v).get("chat_format") is not None:
        raise ValueError(f"variants.{_v}.chat_format must be null for a {_family!r} toy teacher (only Orion "
                         "teachers carry a chat format)")
    _init = WORLD["teachers"][_v].get("init_from")
    if WORLD["teachers"][_v]["role"] != "base" and _init not in TOY_VARIANTS:
        raise ValueError(f"world.teachers.{_v}.init_from must name a toy variant, found {_init!r}")


def teacher_recipe(variant):
    """The pretraining settings of a toy variant's teacher (world.teachers.<variant>)."""
    return WORLD["teachers"][variant]


def teacher_settings(variant):
    """The recipe's settings as pretrain_teacher's params: without threads and init_from (not output-defining), and
    without family / family_options at their defaults (orion, {}), so an Orion teacher's params, and so its
    outputs, are what they were before families existed."""
    recipe = teacher_recipe(variant)
    return {k: v for k, v in recipe.items() if k not in ("threads", "init_from")
            and not (k == "family" and v == "orion") and not (k == "family_options" and not v)}


def teacher_init_input(wildcards):
    recipe = teacher_recipe(wildcards.variant)
    return {"init": teacher_dir(recipe["init_from"])} if recipe["role"] != "base" else {}


# MIRACL's corpus files, fetched on the submitting host (rules/fetch.smk) unless corpus.miracl.data_files names
# local files
MIRACL_DIR = R("downloads", "miracl")


CORPUS_ABLATIONS = CORPUS.get("ablations") or {}
for _name, _settings in [("corpus.domains", CORPUS)] + [(f"corpus.ablations.{k}", v) for k, v in CORPUS_ABLATIONS.items()]:
    if "passages" not in (_settings.get("domains") or ["passages"]):
        raise ValueError(f"{_name}: the domains must include passages (the encyclopedic text every corpus is built on)")
for _name, _abl in config["train"].get("ablations", {}).items():
    if _abl["corpus"] not in CORPUS_ABLATIONS:
        raise ValueError(f"train.ablations.{_name}.corpus {_abl['corpus']!r} is not in corpus.ablations "
                         f"({sorted(CORPUS_ABLATIONS)})")
    for _v in _abl["variants"]:
        if _v not in VARIANTS:
            raise ValueError(f"train.ablations.{_name}.variants: {_v!r} is not a configured variant")


def corpus_settings(wildcards):
    """The settings of the corpus named by {corpus}: `corpus` (the transfer corpus) or `corpus-<ablation>`
    (corpus.ablations.<ablation> overriding domains / languages / coverage of the transfer corpus; same budget and
    length)."""
    name = wildcards.corpus[len("corpus-"):] if wildcards.corpus != "corpus" else None
    settings = {k: CORPUS[k] for k in ("source", "languages", "token_budget", "max_length", "domains")}
    settings.update({k: v for k, v in (CORPUS_ABLATIONS[name] if name else {}).items() if v is not None})
    if CORPUS.get("coverage") is not None:  # an ablation inherits the transfer corpus's coverage unless it sets one
        settings.setdefault("coverage", CORPUS["coverage"])
    return settings


def corpus_input(wildcards):
    """The tokenizer (toy: the world's; otherwise the first variant's teacher dir) and the documents: the toy
    world's passages, or MIRACL's fetched files."""
    if CORPUS["source"] == "world":
        return {"tokenizer": R("tokenizer", "tokenizer.model"), "world": R("world")}
    inputs = {"tokenizer": teacher_dir(VARIANTS[0])}
    if CORPUS["miracl"]["data_files"] is None:
        inputs["miracl"] = MIRACL_DIR
    return inputs
