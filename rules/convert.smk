# Convert stage: each variant's teacher (any supported family) -> stock Llama, once per norm mapping (kept.convert).
# Hub teachers are fetched first by the fetch stage (rules/fetch.smk, rule fetch_source).

CONVERT = config["convert"]


rule convert:
    input:
        teacher=lambda w: teacher_dir(w.variant),
        calibration=R("corpus"),
    output:
        model=directory(R("{variant}", "init-{norm}", "model")),
    params:
        norm="{norm}",
        mlp_target=CONVERT["mlp_target"],
        dtype=CONVERT["dtype"],
        max_shard_size=CONVERT["max_shard_size"],
        fidelity_tokens=CONVERT["fidelity_tokens"],
        fit_tokens=CONVERT["fit_tokens"],
        chat=lambda w: variant_cfg(w.variant).get("chat_format") is not None,
        device=CONVERT["device"],
    log:
        R("logs/convert/{variant}-{norm}.log"),
    benchmark:
        R("benchmarks/convert/{variant}-{norm}.tsv")
    threads: 2
    resources:
        gpu=1 if CONVERT["device"].startswith("cuda") else 0,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/convert.py"


TARGETS.extend(R(v, f"init-{n}", "model") for v in VARIANTS for n in variant_norms(v))
