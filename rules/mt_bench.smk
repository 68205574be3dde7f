# Evaluation stage, MT-Bench: FastChat answer files per grid model and chat format (teachers in Orion's format,
# students in both Llama-3 and Orion), single-grading judgments through the configured judge (an OpenAI-compatible
# endpoint or the toy world's rubric judge), a summary per model and format, and each variant's judgments
# collected into one FastChat judgment file. Question/prompt/reference data: the world stage (toy), a PyPI wheel
# (pypi) or a directory laid out like FastChat's llm_judge/data.

rule mtbench_answer_teacher:
    # One job per model answers in each of its formats (one model load); teachers answer in the teacher formats.
    input:
        model=model_input,
        questions=MTB_FILES["questions"],
    output:
        answers=expand(
            R("{{variant}}", "mtbench", "model_answer", "{{model}}-{fmt}.jsonl"), fmt=mtbench_formats("teacher")
        ),
    wildcard_constraints:
        model="teacher",
    params:
        model="{model}",
        formats=mtbench_formats("teacher"),
        max_new_tokens=MTB["max_new_tokens"],
        temperatures=MTB["temperatures"],
        default_temperature=MTB["default_temperature"],
        batch_size=MTB["batch_size"],
        question_limit=MTB["question_limit"],
        seed=config["seed"],
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/mtbench_answer/{variant}-{model}.log"),
    benchmark:
        R("benchmarks/mtbench_answer/{variant}-{model}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=240 if EVAL["device"].startswith("cuda") else 30,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/mtbench_answer.py"


rule mtbench_answer_student:
    # Converted and trained students answer in every student format (Llama-3 and Orion by default).
    input:
        model=model_input,
        questions=MTB_FILES["questions"],
    output:
        answers=expand(
            R("{{variant}}", "mtbench", "model_answer", "{{model}}-{fmt}.jsonl"), fmt=mtbench_formats("student")
        ),
    wildcard_constraints:
        model="|".join(re.escape(n) for n in INIT_MODELS + trained_names()),
    params:
        model="{model}",
        formats=mtbench_formats("student"),
        max_new_tokens=MTB["max_new_tokens"],
        temperatures=MTB["temperatures"],
        default_temperature=MTB["default_temperature"],
        batch_size=MTB["batch_size"],
        question_limit=MTB["question_limit"],
        seed=model_seed,
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/mtbench_answer/{variant}-{model}.log"),
    benchmark:
        R("benchmarks/mtbench_answer/{variant}-{model}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=480 if EVAL["device"].startswith("cuda") else 30,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/mtbench_answer.py"


rule mtbench_judge:
    # Judgments of one answer file, then its summary (a file with no valid judgment fails here: no fake score).
    input:
        unpack(mtbench_judge_input),
    output:
        judgments=R("{variant}", "mtbench", "judgments", "{model}-{fmt}.jsonl"),
        summary=R("{variant}", "eval", "{model}", "mtbench-{fmt}.json"),
    wildcard_constraints:
        fmt="orion|llama3",
    params:
        # the judge's settings; for an API judge only the NAME of the key's environment variable
        judge={k: v for k, v in (MTB_JUDGE or {}).items()},
        judge_name=mtbench_judge_name(),
        question_limit=MTB["question_limit"],
        model="{model}",
        variant="{variant}",
        chat_format="{fmt}",
    log:
        R("logs/mtbench_judge/{variant}-{model}-{fmt}.log"),
    benchmark:
        R("benchmarks/mtbench_judge/{variant}-{model}-{fmt}.tsv")
    threads: 1
    resources:
        runtime=120,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/mtbench_judge.py"


rule mtbench_collect:
    # One FastChat judgment file per variant, as FastChat's show_result reads it.
    input:
        lambda w: [R(w.variant, "mtbench", "judgments", f"{m}-{f}.jsonl") for m, f in mtbench_pairs(w.variant)],
    output:
        R("{variant}", "mtbench", "model_judgment", f"{MTB_JUDGE_FILE}_single.jsonl"),
    log:
        R("logs/mtbench_collect/{variant}.log"),
    threads: 1
    conda:
        "../envs/eval.yaml"
    shell:
        "(cat {input} > {output}.tmp && mv {output}.tmp {output}) 2> {log}"


localrules:
    mtbench_collect,


for _v in variants_with("mtbench"):
    TARGETS.extend(R(_v, "eval", m, f"mtbench-{f}.json") for m, f in mtbench_pairs(_v))
    TARGETS.append(R(_v, "mtbench", "model_judgment", f"{MTB_JUDGE_FILE}_single.jsonl"))
