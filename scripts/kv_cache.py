"""Snakemake script (rules/convert.smk, rule kv_cache): one model's KV-cache bytes per token, measured in
transformers' cache (kept.models.kv_bytes_per_token), for the graft table."""

import logging

from kept.atomic import write_json
from kept.models import kv_bytes_per_token
from kept.smk import log_to_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
log_to_rule(smk)

w = smk.wildcards
per_token = kv_bytes_per_token(smk.input.model, tokens=smk.params.tokens)
write_json(smk.output.json, {"variant": w.variant, "model": w.model, "tokens": smk.params.tokens,
                             "kv_cache_bytes_per_token": per_token})
logging.info("done: %s %s: %.0f KV-cache bytes per token", w.variant, w.model, per_token)
