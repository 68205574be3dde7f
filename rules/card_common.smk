# Helpers of rules/card.smk (included by it): which evaluation summaries each student's card quotes.

CARD_EVALS = ("h6", "kommlu", "code", "longctx", "mtbench")


def card_evals(variant, model):
    """The summary files of `model`'s evaluations in `variant` (the same paths the eval rules write)."""
    files = []
    for name in CARD_EVALS:
        if model not in eval_models(variant, name):
            continue
        if name == "mtbench":
            files += [R(variant, "eval", model, f"mtbench-{f}.json") for f in mtbench_formats(model)]
        else:
            files.append(R(variant, "eval", model, f"{name}.json"))
    return files


def card_models(variant):
    """Students (converted or trained) with at least one evaluation (not the regime control: no conversion to
    describe)."""
    return [m for m in model_names(variant) if m != "teacher" and not is_control(m) and card_evals(variant, m)]


def card_input(wildcards):
    inputs = {"model": model_dir(wildcards.variant, wildcards.model),
              "evals": card_evals(wildcards.variant, wildcards.model)}
    if parse_trained(wildcards.model):  # the fidelity a trained student's card quotes is its initial conversion's
        inputs["init"] = model_dir(wildcards.variant, f"init-{trained_spec(wildcards.model)[1]}")
    return inputs
