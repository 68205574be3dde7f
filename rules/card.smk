# Model cards with scores: every evaluated student's card (README.md in its model directory, written at export
# with the mapping, recipe, fidelity and runtime requirements; kept.card) is re-rendered with the evaluation
# summaries the workflow measured for it. The output is a copy of the card next to the model directory; the
# README.md inside it is replaced too, which kept.card does only for a card it wrote itself.

include: "card_common.smk"


# Reads a few JSON files: run it on the submitting host.
localrules:
    model_card,


rule model_card:
    input:
        unpack(card_input),
    output:
        card=R("{variant}", "{model}", "model_card.md"),
    wildcard_constraints:
        model="|".join(re.escape(n) for n in INIT_MODELS + trained_names()),
    log:
        R("logs/model_card/{variant}-{model}.log"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/model_card.py"


TARGETS.extend(R(v, m, "model_card.md") for v in VARIANTS for m in card_models(v))
