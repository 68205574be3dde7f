# Helpers of the evaluation rules (eval_harness.smk, mt_bench.smk, longctx.smk): config views, input paths,
# model subsets. Functions only (no rules), so the rule files stay declarative.
import re

EVAL = config["eval"]
HARNESS = EVAL["harness"]
# the harness settings that define a result (where the datasets are cached does not)
HARNESS_PARAMS = {k: v for k, v in HARNESS.items() if k != "datasets_cache"}


def eval_gpu(wildcards=None):
    return 1 if EVAL["device"].startswith("cuda") else 0


def eval_data(*parts):
    """A file or directory the world stage writes under eval_data/ (toy suites)."""
    return R("eval_data", *parts)


# lm-eval's datasets, fetched on the submitting host (rules/fetch.smk) into the workflow's own cache; harness
# jobs read it with the hub offline
LM_EVAL_CACHE = R(HARNESS.get("datasets_cache", "hf_datasets"))


def harness_task_inputs():
    """The toy suites' task directory, or the fetched lm-eval cache."""
    if HARNESS["tasks_from"] == "toy":
        return {"tasks": eval_data("tasks")}
    return {"lm_eval_cache": LM_EVAL_CACHE}


def harness_input(wildcards):
    return {"model": model_dir(wildcards.variant, wildcards.model), **harness_task_inputs()}


def recovery_tasks():
    """The h6 columns named by eval.recovery.columns, in that order."""
    by_name = {t["name"]: t for t in EVAL["h6"]}
    missing = [c for c in EVAL["recovery"]["columns"] if c not in by_name]
    if missing:
        raise ValueError(f"eval.recovery.columns: {missing} are not columns of eval.h6 ({sorted(by_name)})")
    return [by_name[c] for c in EVAL["recovery"]["columns"]]


def recovery_variants():
    chosen = EVAL["recovery"]["variants"]
    return [v for v in variants_with("h6") if chosen is None or v in chosen]


def recovery_models(variant):
    """Trained students of a variant with recovery curves: every method from every init, primary seed, transfer
    corpus (not the fast path: a run that stops at parity has snapshots only up to its stop, which the static DAG
    cannot know; not the regime control, which writes no snapshots)."""
    return trained_names(variant, seeds=SEEDS[:1], ablations=False, fast=False, control=False)


def recovery_steps(variant, model):
    """Snapshot steps of a student evaluated on the recovery subset: every snapshot, less the last when it is the
    final model and H6 evaluates that model in full (the curves read its h6 summary there: final_recovery_items)."""
    steps = snapshot_steps()
    if len(steps) > 1 and steps[-1] == config["train"]["steps"] and model in eval_models(variant, "h6"):
        return steps[:-1]
    return steps


def recovery_curve_items(variant, model, tag):
    """(label, summary, detail) of a student's recovery curve: the recovery summary of every evaluated snapshot,
    and the final model's h6 summary at the last step where that one stands in for the last snapshot. ``tag``
    formats the step into the label's tag ("{step}" for the figure)."""
    steps = recovery_steps(variant, model)
    out = [((variant, model, tag.format(step=s)), R(variant, "recovery", model, f"step-{s}.json")) for s in steps]
    out += [((variant, model, tag.format(step=s)), R(variant, "eval", model, "h6.json"))
            for s in snapshot_steps() if s not in steps]
    return out


def model_seed(wildcards):
    """Seed of a model's sampled evaluations (MT-Bench): a trained student's own seed, else the global seed."""
    return trained_spec(wildcards.model)[3] if parse_trained(wildcards.model) else config["seed"]


def recovery_input(wildcards):
    return {"snapshots": R(wildcards.variant, wildcards.method, "snapshots"), **harness_task_inputs()}


def lm_eval_fetch_tasks():
    """Every lm-eval task spec some harness job runs (H6, KoMMLU; the recovery columns are H6 columns), once."""
    specs, seen = [], set()
    for suite in ("h6", "kommlu"):
        if not variants_with(suite):
            continue
        for spec in EVAL[suite]:
            if spec["task"] not in seen:
                seen.add(spec["task"])
                specs.append(spec)
    return specs


def code_probe_file():
    probe = EVAL["code"]["probe"]
    if probe == "toy":
        return eval_data("code", "probe.jsonl")
    if probe == "humaneval":
        return R("code_probe", "humaneval.jsonl")
    return probe


MTB = EVAL["mtbench"]
MTB_JUDGE = MTB["judge"]

if variants_with("mtbench") and MTB_JUDGE is None:
    raise ValueError(
        "eval.mtbench.judge is not configured, but variants "
        f"{variants_with('mtbench')} run mtbench: configure a judge (backend: openai with model, base_url and "
        "api_key_env, or backend: toy) or remove mtbench from their evals. MT-Bench scores are never made up."
    )
if MTB_JUDGE is not None and MTB_JUDGE["backend"] == "openai" and not MTB_JUDGE.get("model"):
    raise ValueError("eval.mtbench.judge: backend openai needs model (the judge model name, e.g. gpt-4)")
if MTB_JUDGE is not None and MTB_JUDGE["backend"] == "openai" and MTB["data"] == "toy":
    raise ValueError("eval.mtbench: an openai judge needs FastChat's judge prompts; set eval.mtbench.data to pypi or a path")


def mtbench_files():
    """{questions, prompts?, reference?, rubric?} for the configured MT-Bench data."""
    if MTB["data"] == "toy":
        return {"questions": eval_data("mtbench", "question.jsonl"), "rubric": eval_data("mtbench", "rubric.jsonl")}
    root = R("mtbench_data") if MTB["data"] == "pypi" else MTB["data"]
    files = {
        "questions": str(Path(root, MTB["bench"], "question.jsonl")),
        "prompts": str(Path(root, "judge_prompts.jsonl")),
        "reference": str(Path(root, MTB["bench"], "reference_answer", f"{MTB['reference_model']}.jsonl")),
    }
    if MTB_JUDGE is not None and MTB_JUDGE["backend"] == "toy":
        files["rubric"] = eval_data("mtbench", "rubric.jsonl")
    return files


def mtbench_judge_name():
    judge = MTB_JUDGE or {}
    return judge.get("model") or ("toy-judge" if judge.get("backend") == "toy" else "judge")


def mtbench_pairs(variant):
    """(model, format) of every MT-Bench answer file of a variant."""
    return [(m, f) for m in eval_models(variant, "mtbench") for f in mtbench_formats(m)]


def mtbench_judge_input(wildcards):
    return {"answers": R(wildcards.variant, "mtbench", "model_answer", f"{wildcards.model}-{wildcards.fmt}.jsonl"),
            **MTB_FILES}


MTB_FILES = mtbench_files()
MTB_JUDGE_FILE = re.sub(r"[^A-Za-z0-9_.-]+", "_", mtbench_judge_name())


LONGCTX = EVAL["longctx"]


def longctx_doc_file(name):
    spec = LONGCTX["sources"][name]
    return R("longctx_docs", f"{name}.jsonl") if spec.get("dataset") else eval_data("longctx", f"{name}.jsonl")
