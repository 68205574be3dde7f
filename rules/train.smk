# Training stage: UT / XKD-h / XKD-z per variant on one matched budget (kept.train), the offline teacher cache
# for XKD-z, and the Appendix-A pilot. Resume state lives in {variant}/{method}/resume/, which is not a declared
# output, so Snakemake never deletes it: a killed job rerun with --rerun-incomplete resumes where it stopped.

include: "train_common.smk"


rule train:
    input:
        unpack(train_input),
    output:
        model=directory(R("{variant}", "{method}", "model")),
        snapshots=directory(R("{variant}", "{method}", "snapshots")),
        log=R("{variant}", "{method}", "train_log.jsonl"),
    params:
        objective=lambda w: trained_spec(w.method)[0],
        settings=student_settings,
        work_dir=lambda w: R(w.variant, w.method),
        launcher=TRAIN["launcher"],
        num_processes=TRAIN["num_processes"],
        num_nodes=NUM_NODES,
        accelerate_profile=accelerate_profile(),
    log:
        R("logs/train/{variant}-{method}.log"),
    benchmark:
        R("benchmarks/train/{variant}-{method}.tsv")
    threads: TRAIN["threads"]
    resources:
        gpu=TRAIN["resources"]["gpu"] * NUM_NODES,
        mem_mb=TRAIN["resources"]["mem_mb"],
        runtime=TRAIN["resources"]["runtime"],
        **TRAIN_NODE_RESOURCES,
    conda:
        TRAIN_ENV
    script:
        "../scripts/train.py"


rule cache_teacher:
    input:
        teacher=lambda w: teacher_dir(w.variant),
        corpus=R("corpus"),
    output:
        cache=directory(R("{variant}", "teacher_cache")),
    params:
        top_k=TRAIN["offline_teacher"].get("top_k", 64),
        logprob_dtype=TRAIN["offline_teacher"].get("logprob_dtype", "float16"),
        batch_size=TRAIN["offline_teacher"].get("batch_size", 8),
        device=TRAIN["offline_teacher"].get("device", "cpu"),
        temperature=lambda w: train_settings("xkd_z", variant=w.variant)["temperature"],
        teacher_dtype=lambda w: train_settings("xkd_z", variant=w.variant)["teacher_dtype"],
        chunk_size=lambda w: train_settings("xkd_z", variant=w.variant)["kl_chunk_size"],
    log:
        R("logs/cache_teacher/{variant}.log"),
    benchmark:
        R("benchmarks/cache_teacher/{variant}.tsv")
    threads: TRAIN["threads"]
    resources:
        gpu=1 if TRAIN["offline_teacher"].get("device", "cpu").startswith("cuda") else 0,
        mem_mb=TRAIN["resources"]["mem_mb"],
        runtime=TRAIN["resources"]["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/cache_teacher.py"


rule pilot:
    input:
        student=R("{variant}", f"init-{TRAIN_INIT}", "model"),
        teacher=lambda w: teacher_dir(w.variant),
        corpus=R("corpus"),
    output:
        cosine=R("{variant}", "pilot", "cosine.jsonl"),
    params:
        settings=pilot_settings(),
        work_dir=lambda w: R(w.variant, "pilot"),
    log:
        R("logs/pilot/{variant}.log"),
    benchmark:
        R("benchmarks/pilot/{variant}.tsv")
    threads: TRAIN["threads"]
    resources:
        gpu=ONE_GPU,
        mem_mb=TRAIN["resources"]["mem_mb"],
        runtime=TRAIN["resources"]["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/pilot.py"


TARGETS.extend(R(v, m, "model") for v in VARIANTS for m in trained_names(v))
TARGETS.extend(R(v, m, "train_log.jsonl") for v in VARIANTS for m in trained_names(v))
TARGETS.extend(R(v, "pilot", "cosine.jsonl") for v in PILOT.get("variants", []) if v in VARIANTS)
