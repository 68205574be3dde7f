"""Snakemake script (rules/card.smk): a model's card with the evaluation summaries the workflow measured."""

import logging

from kept.card import publish_card
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk, threads=False)

path = publish_card(model_dir=smk.input.model, evaluations=list(smk.input.evals), output=smk.output.card,
                    fidelity_dir=smk.input.get("init"))
logging.info("done: %s (and %s)", smk.output.card, path)
