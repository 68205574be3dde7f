"""Granite (``GraniteForCausalLM``, Granite 3.x dense) and HyperCLOVA X SEED (``HyperCLOVAXForCausalLM``): Llama with
muP multipliers, all folded exactly: ``embedding_multiplier`` into the embedding (the tied head untied),
``residual_multiplier`` into o_proj and down_proj, ``attention_multiplier`` (the q.k scale) times sqrt(head_dim)
into q_proj, and the logit scale (Granite divides by ``logits_scaling``, HyperCLOVA X multiplies) into an untied
lm_head. HyperCLOVA X's peri-layer norms on the attention and MLP outputs (``use_post_norm``) have no Llama
equivalent: fitted per-channel scales folded into o_proj / down_proj (approximate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, fold_runtime, hf_config, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    hyper = cfg["model_type"] == "hyperclovax"
    logit = float(c.logits_scaling) if hyper else 1.0 / float(c.logits_scaling)
    return llama_like(cfg, path, cfg["model_type"], embed_scale=float(c.embedding_multiplier),
                      residual_scale=float(c.residual_multiplier), attn_scale=float(c.attention_multiplier),
                      logit_scale=logit, folds=("o", "down") if hyper and c.use_post_norm else ())


_BIASES = ("q.b", "k.b", "v.b", "o.b", "gate.b", "up.b", "down.b")
FAMILY = llama_family("granite", read_arch, *LLAMA_CORE, *_BIASES, hf_class="GraniteForCausalLM")
HYPERCLOVAX = llama_family("hyperclovax", read_arch, *LLAMA_CORE, *_BIASES,
                           extra={"pn1.w": f"{_L}.post_norm1.weight", "pn2.w": f"{_L}.post_norm2.weight"},
                           hf_class="HyperCLOVAXForCausalLM", runtime=fold_runtime(o="post_norm1", down="post_norm2"))
