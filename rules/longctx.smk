# Evaluation stage, long context: perplexity against input length per grid model (Figure 4). Toy sources are the
# world stage's long documents (eval_data/longctx/<name>.jsonl); paper sources are Wikipedia passages chosen by a
# fixed rule (rule longctx_docs, rules/fetch.smk). The packed corpus's max_length is recorded as the training length.

rule eval_longctx:
    input:
        model=model_input,
        docs=[longctx_doc_file(name) for name in LONGCTX["sources"]],
        corpus=R("corpus"),
    output:
        summary=R("{variant}", "eval", "{model}", "longctx.json"),
    params:
        sources=list(LONGCTX["sources"]),
        lengths=LONGCTX["lengths"],
        max_docs=LONGCTX["max_docs"],
        model_name="{model}",
        variant="{variant}",
        dtype=EVAL["dtype"],
        device=EVAL["device"],
    log:
        R("logs/eval_longctx/{variant}-{model}.log"),
    benchmark:
        R("benchmarks/eval_longctx/{variant}-{model}.tsv")
    threads: 1
    resources:
        gpu=eval_gpu,
        mem_mb=75000 if EVAL["device"].startswith("cuda") else 4000,
        runtime=240 if EVAL["device"].startswith("cuda") else 30,
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_longctx.py"


TARGETS.extend(R(v, "eval", m, "longctx.json") for v in VARIANTS for m in eval_models(v, "longctx"))
