# Config validation, path helpers and wildcard constraints shared by every rule file.
import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
VARIANTS = list(config["variants"])
NORMS = list(config["convert"]["norms"])
METHODS = list(config["train"]["methods"])
TRAIN_INIT = config["train"]["init"]


# Final targets: each rule file appends the outputs it wants `rule all` to build.
TARGETS = []


def all_targets():
    return TARGETS


def R(*parts):
    """A path under the results directory."""
    return str(Path(RESULTS, *parts))


def variant_cfg(variant):
    return config["variants"][variant]


def source_kind(variant):
    return variant_cfg(variant)["source"]["kind"]


def teacher_dir(variant):
    """The Orion checkpoint directory of a variant's teacher."""
    kind = source_kind(variant)
    if kind == "toy":
        return R("teachers", variant)
    if kind == "hub":
        return R("sources", variant)
    return variant_cfg(variant)["source"]["path"]


def model_names(variant):
    """Every model of a variant's grid: the teacher, the untrained mappings, the trained methods."""
    return ["teacher"] + [f"init-{n}" for n in NORMS] + METHODS


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
    """Grid models that `eval_name` evaluates in `variant` (config eval.models; [] if the variant skips it).
    Tokens: all, teacher, init (= init-<train.init>), inits, trained, or a model name."""
    if eval_name not in evals_of(variant):
        return []
    names = model_names(variant)
    chosen = set()
    for token in config["eval"]["models"][eval_name]:
        if token == "all":
            chosen.update(names)
        elif token == "init":
            chosen.add(f"init-{TRAIN_INIT}")
        elif token == "inits":
            chosen.update(n for n in names if n.startswith("init-"))
        elif token == "trained":
            chosen.update(METHODS)
        else:
            chosen.add(token)
    return [n for n in names if n in chosen]


def mtbench_formats(model):
    """Chat formats a model answers MT-Bench in: the teacher its own, students both (config eval.mtbench.formats)."""
    kind = "teacher" if model == "teacher" else "student"
    return list(config["eval"]["mtbench"]["formats"][kind])


def snapshot_steps():
    """Training steps at which snapshots are written (every train.snapshot_every steps up to train.steps)."""
    every, steps = config["train"].get("snapshot_every", 0), config["train"].get("steps", 0)
    return list(range(every, steps + 1, every)) if every else []


wildcard_constraints:
    variant="|".join(VARIANTS),
    norm="|".join(NORMS),
    method="|".join(METHODS),
    model="|".join(["teacher"] + [f"init-{n}" for n in NORMS] + METHODS),
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
