# The regime check (issue 26): can the transfer budget still teach the teacher? Per toy variant of
# train.teacher_ut, the teacher and its control `ut@teacher` (Teacher + UT, trained by the train rule) are scored on
# the held-out renderings of the teacher's own pretraining mixture (kept.eval.mixture); the report's regime table
# (rules/report.smk) sets that loss beside their toy-H6 difference, the teacher's final loss slope and the budget
# ratio.

include: "regime_common.smk"


rule mixture_loss:
    input:
        model=model_input,
        world=R("world"),
        tokenizer=R("tokenizer", "tokenizer.model"),
    output:
        summary=R("{variant}", "eval", "{model}", "mixture_loss.json"),
    wildcard_constraints:
        model="|".join(re.escape(m) for m in REGIME_MODELS),
    params:
        mixture=lambda w: teacher_recipe(w.variant)["mixture"],
        seq_len=lambda w: teacher_recipe(w.variant)["seq_len"],
        sequences=MIXTURE.get("sequences", 64),
        batch_size=MIXTURE.get("batch_size", 8),
        seed=config["seed"],
        model_name="{model}",
        variant="{variant}",
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/mixture_loss/{variant}-{model}.log"),
    benchmark:
        R("benchmarks/mixture_loss/{variant}-{model}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=60000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=60 if EVAL["device"].startswith("cuda") else 10,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/mixture_loss.py"


TARGETS.extend(R(v, "eval", m, "mixture_loss.json") for v in REGIME_VARIANTS for m in REGIME_MODELS)
