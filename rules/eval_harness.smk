# Evaluation stage, lm-eval part: H6 and KoMMLU per grid model, the recovery subset of H6 on every training
# snapshot (Figure 2), and the code probe (zero-shot transfer). Tasks, shots and metrics come from the config, so
# the toy suites (eval_data/tasks from the world stage) and the leaderboard tasks run through the same rules.

include: "eval_common.smk"


rule eval_harness:
    input:
        unpack(harness_input),
    output:
        summary=R("{variant}", "eval", "{model}", "{suite}.json"),
        raw=directory(R("{variant}", "eval", "{model}", "{suite}")),
    wildcard_constraints:
        suite="h6|kommlu",
    params:
        suite="{suite}",
        tasks=lambda w: EVAL[w.suite],
        harness=HARNESS_PARAMS,
        micro_macro=lambda w: w.suite == "kommlu",
        model_name="{model}",
        variant="{variant}",
        seed=config["seed"],
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/eval_harness/{variant}-{model}-{suite}.log"),
    benchmark:
        R("benchmarks/eval_harness/{variant}-{model}-{suite}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=720 if EVAL["device"].startswith("cuda") else 30,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_harness.py"


rule eval_recovery:
    # One job per snapshot: each is a full evaluation of one model (at 14B, H6 alone takes hours).
    input:
        unpack(recovery_input),
    output:
        summary=R("{variant}", "recovery", "{method}", "step-{step}.json"),
        raw=directory(R("{variant}", "recovery", "{method}", "raw", "step-{step}")),
    params:
        step=lambda w: int(w.step),
        method="{method}",
        variant="{variant}",
        tasks=recovery_tasks(),
        harness=HARNESS_PARAMS,
        seed=config["seed"],
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/eval_recovery/{variant}-{method}-step-{step}.log"),
    benchmark:
        R("benchmarks/eval_recovery/{variant}-{method}-step-{step}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=720 if EVAL["device"].startswith("cuda") else 30,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_recovery.py"


rule eval_code:
    input:
        model=model_input,
        probe=code_probe_file(),
    output:
        summary=R("{variant}", "eval", "{model}", "code.json"),
        details=R("{variant}", "eval", "{model}", "code.items.jsonl"),
    params:
        model_name="{model}",
        variant="{variant}",
        limit=EVAL["code"]["limit"],
        batch_size=EVAL["code"]["batch_size"],
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/eval_code/{variant}-{model}.log"),
    benchmark:
        R("benchmarks/eval_code/{variant}-{model}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=120 if EVAL["device"].startswith("cuda") else 10,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_code.py"


TARGETS.extend(
    R(v, "eval", m, f"{suite}.json") for suite in ("h6", "kommlu") for v in VARIANTS for m in eval_models(v, suite)
)
TARGETS.extend(
    R(v, "recovery", m, f"step-{s}.json") for v in recovery_variants() for m in recovery_models(v) for s in recovery_steps(v, m)
)
TARGETS.extend(R(v, "eval", m, "code.json") for v in VARIANTS for m in eval_models(v, "code"))
