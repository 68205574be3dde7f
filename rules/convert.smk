# Convert stage: each variant's teacher (any supported family) -> stock Llama, once per init (kept.convert): per norm
# mapping, per grafted init (variants.<name>.convert.kv_heads x kv_inits: `{norm}-kv{G}-{kv_init}`, MHA -> GQA) and
# per layer-fitted init (variants.<name>.convert.layer_fit: `{norm}-lfit`).
# Hub teachers are fetched first by the fetch stage (rules/fetch.smk, rule fetch_source).

CONVERT = config["convert"]


rule convert:
    input:
        teacher=lambda w: teacher_dir(w.variant),
        calibration=R("corpus"),
    output:
        model=directory(R("{variant}", "init-{init}", "model")),
    params:
        norm=lambda w: parse_init(w.init).norm,
        kv_heads=lambda w: parse_init(w.init).kv_heads,
        kv_init=lambda w: parse_init(w.init).kv_init or "fit",
        layer_fit=lambda w: parse_init(w.init).layer_fit,
        mlp_target=CONVERT["mlp_target"],
        dtype=CONVERT["dtype"],
        max_shard_size=CONVERT["max_shard_size"],
        fidelity_tokens=CONVERT["fidelity_tokens"],
        fit_tokens=CONVERT["fit_tokens"],
        chat=lambda w: variant_cfg(w.variant).get("chat_format") is not None,
        device=CONVERT["device"],
    log:
        R("logs/convert/{variant}-{init}.log"),
    benchmark:
        R("benchmarks/convert/{variant}-{init}.tsv")
    threads: 2
    resources:
        gpu=1 if CONVERT["device"].startswith("cuda") else 0,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/convert.py"


TARGETS.extend(R(v, f"init-{n}", "model") for v in VARIANTS for n in variant_inits(v))


# The graft table's KV-cache bytes per token, measured in transformers' cache after one forward (not computed from
# the config): the teacher and every init of a variant with a graft axis.
rule kv_cache:
    input:
        model=model_input,
    output:
        json=R("{variant}", "eval", "{model}", "kv_cache.json"),
    params:
        tokens=256,
    log:
        R("logs/kv_cache/{variant}-{model}.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/kv_cache.py"

