# Config validation, path helpers and wildcard constraints shared by every rule file.
import json
import re
from pathlib import Path

from snakemake.utils import validate

from kept.grid import CONTROL, KV_INITS, Init, graft_init, is_control, parse as parse_trained, parse_init, row_name
from kept.grid import trained as trained_model
from kept.smk import declared_family, refused_norms


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
VARIANTS = list(config["variants"])
NORMS = list(config["convert"]["norms"])
METHODS = list(config["train"]["methods"])
# train.init: one mapping or a list (the init x method grid); the first is the primary init, whose students keep
# the plain method names (results/{variant}/{method}/...). train.seeds: the seeds each student is trained (and its
# sampled evaluations run) with; null = [seed]; the first is the primary seed. Names: kept.grid.
TRAIN_INITS = [config["train"]["init"]] if isinstance(config["train"]["init"], str) else list(config["train"]["init"])
TRAIN_INIT = TRAIN_INITS[0]
SEEDS = list(config["train"].get("seeds") or [config["seed"]])
# train.fast: the fast path (kept.train.parity): one more student per listed variant, `{method}@{init}-parity`,
# trained from train.fast.init with train.fast.method until its held-out KL to the teacher reaches the target, under
# the grid's step ceiling (train.steps). Its snapshots stop where it stops, so it has no recovery curve.
FAST = config["train"].get("fast") or {}
FAST_VARIANTS = [v for v in FAST.get("variants", []) if v in config["variants"]]
if FAST_VARIANTS and FAST["init"] not in NORMS:
    raise ValueError(f"train.fast.init: {FAST['init']!r} is not converted; add it to convert.norms ({NORMS})")
# train.teacher_ut: the variants whose teacher also trains as the regime control `ut@teacher` (Teacher + UT: the
# teacher itself, unconverted, with UT's settings on the transfer corpus at the matched budget; kept.grid.CONTROL),
# primary seed only: it measures the teacher, not a method's seed spread
CONTROL_VARIANTS = [v for v in (config["train"].get("teacher_ut") or []) if v in config["variants"]]


# Final targets: each rule file appends the outputs it wants `rule all` to build.
TARGETS = []


def all_targets():
    return TARGETS


def R(*parts):
    """A path under the results directory."""
    return str(Path(RESULTS, *parts))


def corpus_dir(ablation=None):
    """The packed transfer corpus, or the corpus of an ablation of corpus.ablations (kept.grid's `+corpus`)."""
    return R("corpus") if ablation is None else R(f"corpus-{ablation}")


def variant_cfg(variant):
    return config["variants"][variant]


def source_kind(variant):
    return variant_cfg(variant)["source"]["kind"]


def variant_family(variant):
    """The source family a variant declares (kept.smk.declared_family: toy = its recipe's; hub/local =
    variants.<name>.source.family or None, detected at conversion)."""
    return declared_family(config, variant)


def teacher_dir(variant):
    """The checkpoint directory of a variant's teacher (Orion's format or another family's own layout)."""
    kind = source_kind(variant)
    if kind == "toy":
        return R("teachers", variant)
    if kind == "hub":
        return R("sources", variant)
    return variant_cfg(variant)["source"]["path"]


def fast_names(variant=None, *, seeds=None):
    """The fast-path students (train.fast) of a variant (of every variant if None), one per seed."""
    if not FAST_VARIANTS or (variant is not None and variant not in FAST_VARIANTS):
        return []
    return [
        trained_model(FAST["method"], init=FAST["init"], corpus=None, seed=s, primary_init=TRAIN_INIT,
                      primary_seed=SEEDS[0], stop=True).name
        for s in (SEEDS if seeds is None else seeds)
    ]


def variant_norms(variant):
    """Norm mappings converted in a variant: its own variants.<name>.convert.norms (a subset of convert.norms that
    keeps every train.init, and train.fast.init for a fast-path variant), else convert.norms."""
    own = (variant_cfg(variant).get("convert") or {}).get("norms")
    if own is None:
        return NORMS
    key = f"variants.{variant}.convert.norms"
    if not set(own) <= set(NORMS):
        raise ValueError(f"{key}: {sorted(set(own) - set(NORMS))} are not in convert.norms {NORMS}")
    needed = TRAIN_INITS + ([FAST["init"]] if variant in FAST_VARIANTS else [])
    if not set(needed) <= set(own):
        raise ValueError(f"{key}: {own} lacks {sorted(set(needed) - set(own))}, which its students start from "
                         "(train.init / train.fast.init)")
    return [n for n in NORMS if n in own]


def graft_inits(variant=None):
    """The grafted inits of a variant (of every variant if None): its primary mapping (the first train.init) with
    the KV heads merged into each G of variants.<name>.convert.kv_heads, by each init of its convert.kv_inits
    (kept.grid.graft_init: `exact-kv2-fit`); [] without a graft axis."""
    if variant is None:
        return list(dict.fromkeys(i for v in VARIANTS for i in graft_inits(v)))
    own = variant_cfg(variant).get("convert") or {}
    return [graft_init(TRAIN_INIT, g, i) for g in own.get("kv_heads") or [] for i in own.get("kv_inits") or KV_INITS]


def layer_fit_inits(variant=None):
    """The layer-fitted inits of a variant (of every variant if None): with --layer-fit, its primary mapping
    (`paper-lfit`) where variants.<name>.convert.layer_fit is true, each listed mapping where it is a list
    (`[paper, exact]`: paper-lfit, exact-lfit), else []."""
    if variant is None:
        return list(dict.fromkeys(i for v in VARIANTS for i in layer_fit_inits(v)))
    fit = (variant_cfg(variant).get("convert") or {}).get("layer_fit")
    if not fit:
        return []
    norms = [TRAIN_INIT] if fit is True else list(fit)
    missing = [n for n in norms if n not in variant_norms(variant)]
    if missing:
        raise ValueError(f"variants.{variant}.convert.layer_fit: {missing} are not among the mappings the variant "
                         f"converts ({variant_norms(variant)}): the fit refines a mapping it has")
    return [Init(n, layer_fit=True).name for n in norms]


def extra_inits(variant=None):
    """The inits a variant converts and trains from beyond its norm mappings: grafted, then layer-fitted."""
    return list(dict.fromkeys(graft_inits(variant) + layer_fit_inits(variant)))


def variant_inits(variant):
    """Every init converted in a variant: its norm mappings, then its grafted and layer-fitted inits."""
    return variant_norms(variant) + extra_inits(variant)


def variant_train_inits(variant=None):
    """The inits a variant's students train from (every variant's if None): train.init, then its grafted and
    layer-fitted inits."""
    return TRAIN_INITS + extra_inits(variant)


def check_graft(variant):
    """A toy variant's G must divide its recipe's heads and be below them (kept.convert.graft.check_kv_heads, the
    converter's own check): the dry run names the key, not a conversion job after the teacher is built."""
    recipe = config.get("world", {}).get("teachers", {}).get(variant)
    kv_heads = (variant_cfg(variant).get("convert") or {}).get("kv_heads") or []
    if source_kind(variant) != "toy" or not recipe or not kv_heads:
        return
    from kept.convert.graft import check_kv_heads

    heads = recipe["num_heads"]
    for g in kv_heads:
        check_kv_heads(g, heads=heads, current=recipe.get("num_kv_heads") or heads,
                       where=f"variants.{variant}.convert.kv_heads (toy teacher {variant!r})")


def kv_cache_models(variant):
    """The models whose KV cache the graft table measures, where the variant grafts: its primary mapping (the
    teacher's KV heads) and every grafted init."""
    return [f"init-{n}" for n in [TRAIN_INIT] + graft_inits(variant)] if graft_inits(variant) else []


def in_graft_table(variant, model):
    """Whether a grid model enters the graft table: the teacher, the variant's primary mapping and its grafted inits,
    and the matched-budget students on the transfer corpus trained from those."""
    if model == "teacher":
        return True
    t = parse_trained(model)
    if t is not None and (t.control or t.corpus or t.stop):
        return False
    init = model[len("init-"):] if t is None else (t.init or TRAIN_INIT)
    return init in [TRAIN_INIT] + graft_inits(variant)


for _v in VARIANTS:  # a bad per-variant override, or a mapping the family refuses, fails the dry run, not a job
    check_graft(_v)
    for _norm, _why in refused_norms(variant_family(_v), variant_norms(_v)):
        raise ValueError(f"variant {_v!r}: a {variant_family(_v)!r} source refuses norm mapping {_norm!r} ({_why}); "
                         f"leave it out with variants.{_v}.convert.norms")


def variant_methods(variant=None):
    """Methods trained in a variant: its own variants.<name>.train.methods (a subset of train.methods), else
    train.methods (every variant's, for None)."""
    if variant is None:
        return METHODS
    own = (config["variants"][variant].get("train") or {}).get("methods")
    if own is None:
        return METHODS
    if not set(own) <= set(METHODS):
        raise ValueError(f"variants.{variant}.train.methods: {sorted(set(own) - set(METHODS))} are not in "
                         f"train.methods {METHODS}")
    return [m for m in METHODS if m in own]


def trained_names(variant=None, *, seeds=None, ablations=True, fast=True, control=True):
    """Trained models of a variant (every variant if None): each method from each init (train.init, then the
    variant's grafted inits) with each seed (all
    seeds unless `seeds` is given), then the corpus ablations of train.ablations that name the variant, then the
    fast-path students of train.fast (unless `fast` is False), then the regime control of train.teacher_ut
    (unless `control` is False; with the primary seed)."""
    seeds = SEEDS if seeds is None else seeds
    names = [
        trained_model(m, init=i, corpus=None, seed=s, primary_init=TRAIN_INIT, primary_seed=SEEDS[0]).name
        for i in variant_train_inits(variant)
        for m in variant_methods(variant)
        for s in seeds
    ]
    if ablations:
        for name, abl in config["train"].get("ablations", {}).items():
            if variant is not None and variant not in abl["variants"]:
                continue
            names += [
                trained_model(m, init=TRAIN_INIT, corpus=abl["corpus"], seed=s, primary_init=TRAIN_INIT,
                              primary_seed=SEEDS[0]).name
                for m in abl["methods"]
                for s in seeds
            ]
    if fast:
        names += fast_names(variant, seeds=seeds)
    if control and SEEDS[0] in seeds and (variant in CONTROL_VARIANTS if variant is not None else CONTROL_VARIANTS):
        names.append(CONTROL)
    return list(dict.fromkeys(names))


def trained_spec(name):
    """(method, init, corpus, seed) of a trained student's name (kept.grid), primary values filled in."""
    t = parse_trained(name)
    return t.method, t.init or TRAIN_INIT, t.corpus, SEEDS[0] if t.seed is None else t.seed


def model_names(variant):
    """Every model of a variant's grid: the teacher, the untrained mappings, the trained students."""
    return ["teacher"] + [f"init-{n}" for n in variant_inits(variant)] + trained_names(variant)


def model_dir(variant, model):
    if model == "teacher":
        return teacher_dir(variant)
    if model.startswith("init-"):
        return R(variant, model, "model")
    return R(variant, model, "model")


def model_input(wildcards):
    """Input function: the model directory named by {variant} and {model}."""
    return model_dir(wildcards.variant, wildcards.model)


def evals_of(variant):
    return list(variant_cfg(variant).get("evals", []))


def variants_with(eval_name):
    return [v for v in VARIANTS if eval_name in evals_of(v)]


def eval_models(variant, eval_name):
    """Grid models that `eval_name` evaluates in `variant` (variants.<name>.eval_models.<eval>, else config
    eval.models; [] if the variant skips it). Tokens: all, teacher, init (= init-<first train.init>), inits, trained
    (every trained model of the grid: methods x inits x seeds, the corpus ablations and the regime control), fast
    (the fast-path students of train.fast), control (the regime control, ut@teacher), or a model name (a student's
    name covers all its seeds)."""
    if eval_name not in evals_of(variant):
        return []
    names = model_names(variant)
    chosen = set()
    tokens = (variant_cfg(variant).get("eval_models") or {}).get(eval_name)
    for token in tokens if tokens is not None else config["eval"]["models"][eval_name]:
        if token == "all":
            chosen.update(names)
        elif token == "init":
            chosen.add(f"init-{TRAIN_INIT}")
        elif token == "inits":
            chosen.update(n for n in names if n.startswith("init-"))
        elif token == "trained":
            chosen.update(trained_names(variant, fast=False))
        elif token == "fast":
            chosen.update(fast_names(variant))
        elif token == "control":
            chosen.update(n for n in names if is_control(n))
        else:  # a model name; a trained student's name also selects its other seeds
            chosen.update(n for n in names if n == token or row_name(n) == token)
    return [n for n in names if n in chosen]


def mtbench_formats(model):
    """Chat formats a model answers MT-Bench in: the teacher its own, students both (config eval.mtbench.formats)."""
    kind = "teacher" if model == "teacher" else "student"
    return list(config["eval"]["mtbench"]["formats"][kind])


def fast_path_items():
    """The fast-path table's inputs: per variant of train.fast, the teacher, the full-budget students of
    train.fast.method from every train.init (transfer corpus) and the fast-path students, each with its H6 and
    MT-Bench files where it is evaluated on them, and its train log (the step it ended at)."""
    items = []
    for v in FAST_VARIANTS:
        full = [n for n in trained_names(v, ablations=False, fast=False) if parse_trained(n).method == FAST["method"]]
        for m in ["teacher"] + full + fast_names(v):
            if m in eval_models(v, "h6"):
                items.append(((v, m, "h6"), R(v, "eval", m, "h6.json"), R(v, "eval", m, "h6")))
            if m in eval_models(v, "mtbench"):
                items += [((v, m, f"mtbench-{f}"), R(v, "eval", m, f"mtbench-{f}.json"),
                           R(v, "mtbench", "judgments", f"{m}-{f}.jsonl")) for f in mtbench_formats(m)]
            if m != "teacher":
                items.append(((v, m, "train"), R(v, m, "train_log.jsonl"), R(v, m, "train_log.jsonl")))
    return items


def snapshot_steps():
    """Training steps at which snapshots are written (every train.snapshot_every steps up to train.steps)."""
    every, steps = config["train"].get("snapshot_every", 0), config["train"].get("steps", 0)
    return list(range(every, steps + 1, every)) if every else []


# every init model any variant converts (norm mappings, grafted and layer-fitted inits): the `init-*` wildcards
INIT_MODELS = [f"init-{n}" for n in NORMS + extra_inits()]


wildcard_constraints:
    variant="|".join(VARIANTS),
    init="|".join(re.escape(n) for n in NORMS + extra_inits()),
    method="|".join(re.escape(n) for n in trained_names()),
    model="|".join(re.escape(n) for n in ["teacher"] + INIT_MODELS + trained_names()),
    step=r"\d+",


# One live run per results directory: a second checkout (or a second snakemake) writing the same results stops
# here with a message naming the run that holds it. Dry runs and the job processes Snakemake spawns run no hooks.
def _results_lock():
    import sys

    sys.path.insert(0, workflow.basedir)  # kept from this checkout, also where Snakemake's env lacks it
    import kept.atomic

    return kept.atomic


onstart:
    _results_lock().lock_directory(RESULTS, what="snakemake run")


onsuccess:
    _results_lock().unlock_directory(RESULTS)


onerror:
    _results_lock().unlock_directory(RESULTS)
