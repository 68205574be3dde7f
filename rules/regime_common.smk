# Helpers of the regime rules (included by rules/regime.smk): which variants are checked, and each toy teacher's
# pretraining chain. Functions only (no rules), so the rule file stays declarative (snakemake --lint).

# the variants whose regime is checked: a toy teacher (a recipe: its mixture and pretraining log) with a control
REGIME_VARIANTS = [v for v in CONTROL_VARIANTS if source_kind(v) == "toy"]
REGIME_MODELS = ["teacher", CONTROL]
MIXTURE = EVAL.get("mixture_loss") or {}


def teacher_chain(variant):
    """The toy variant's teacher and the teachers it was pretrained from (init_from), itself first."""
    chain = [variant]
    while teacher_recipe(chain[-1])["role"] != "base":  # a base recipe starts fresh, whatever init_from says
        chain.append(teacher_recipe(chain[-1])["init_from"])
    return chain
