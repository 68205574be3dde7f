# Data stage: the offline toy world (world -> tokenizer -> eval suites, toy teachers of any source family)
# and the packed transfer corpus (world passages in the toy config, MIRACL streamed through `datasets` in the
# paper config; one rule, one code path: kept.corpus).

include: "data_common.smk"


rule world:
    output:
        world=directory(R("world")),
    params:
        spec={**{k: v for k, v in WORLD["generator"].items()}, "seed": config["seed"]},
    log:
        R("logs/data/world.log"),
    benchmark:
        R("benchmarks/data/world.tsv")
    threads: 1
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/world.py"


rule train_tokenizer:
    input:
        world=R("world"),
    output:
        model=R("tokenizer", "tokenizer.model"),
    params:
        vocab_size=WORLD["tokenizer"]["vocab_size"],
    log:
        R("logs/data/train_tokenizer.log"),
    benchmark:
        R("benchmarks/data/train_tokenizer.tsv")
    threads: 1
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train_tokenizer.py"


rule eval_data:
    input:
        world=R("world"),
        tokenizer=R("tokenizer", "tokenizer.model"),
    output:
        tasks=directory(R("eval_data", "tasks")),
        mtbench_questions=R("eval_data", "mtbench", "question.jsonl"),
        mtbench_rubric=R("eval_data", "mtbench", "rubric.jsonl"),
        longctx=[R("eval_data", "longctx", f"{lang}.jsonl") for lang in WORLD["eval"]["longctx_languages"]],
        code_probe=R("eval_data", "code", "probe.jsonl"),
        manifest=R("eval_data", "manifest.json"),
    params:
        settings={k: v for k, v in WORLD["eval"].items() if k != "longctx_factor"},
        longctx_min_tokens=WORLD["eval"]["longctx_factor"] * CORPUS["max_length"],
        coverage=CORPUS.get("coverage", 1.0),  # the in/out-of-corpus tags of the items: what the transfer
        corpus_domains=CORPUS["domains"],  # corpus keeps of these domains at this coverage states
    log:
        R("logs/data/eval_data.log"),
    benchmark:
        R("benchmarks/data/eval_data.tsv")
    threads: 1
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/eval_data.py"


rule prepare_corpus:
    # {corpus} is `corpus` (the transfer corpus) or `corpus-<name>` (an ablation of corpus.ablations)
    input:
        unpack(corpus_input),
    output:
        corpus=directory(R("{corpus}")),
    wildcard_constraints:
        corpus="|".join(["corpus"] + [f"corpus-{n}" for n in CORPUS_ABLATIONS]),
    params:
        settings=corpus_settings,
        seed=config["seed"],
        miracl=CORPUS["miracl"],
    log:
        R("logs/data/prepare_{corpus}.log"),
    benchmark:
        R("benchmarks/data/prepare_{corpus}.tsv")
    threads: 1
    resources:
        runtime=30 if CORPUS["source"] == "world" else 600,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/prepare_corpus.py"


rule pretrain_teacher:
    input:
        unpack(teacher_init_input),
        world=R("world"),
        tokenizer=R("tokenizer", "tokenizer.model"),
    output:
        teacher=directory(R("teachers", "{variant}")),
        log=R("teachers", "{variant}.train_log.jsonl"),
    params:
        settings=lambda w: teacher_settings(w.variant),
        seed=config["seed"],
        work_dir=lambda w: R("teachers", f".work-{w.variant}"),
    log:
        R("logs/data/pretrain_teacher-{variant}.log"),
    benchmark:
        R("benchmarks/data/pretrain_teacher-{variant}.tsv")
    threads: lambda w: teacher_recipe(w.variant)["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/pretrain_teacher.py"


TARGETS.append(R("corpus"))
if TOY_VARIANTS:
    TARGETS.extend([R("eval_data", "manifest.json")] + [R("teachers", v) for v in TOY_VARIANTS])
