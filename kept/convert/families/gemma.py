"""Gemma (``GemmaForCausalLM``) and VaultGemma (``VaultGemmaForCausalLM``). Gemma's RMSNorms multiply by
``(1 + w)``: the Llama gain is ``w + 1``. Its embedding output is scaled by sqrt(hidden_size) (float32, as its
``GemmaTextScaledWordEmbedding`` computes it) while the tied LM head reads the unscaled rows: the embedding is
written scaled and the head untied. The MLP is gated GELU (tanh): exact with ``hidden_act`` kept (transformers only;
``mlp_target='runtimes'`` writes the SiLU form). VaultGemma is Gemma 2's block without the post norms: exact but
for its attention and final logit softcaps and sliding windows (approximate). Bidirectional attention (Gemma
encoders) is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kept.convert.families.base import LLAMA_CORE, Arch, llama_family, llama_like
from kept.errors import CheckpointError


def gemma_arch(cfg: dict[str, Any], path: Path, family: str, **kw: Any) -> Arch:
    """What every Gemma shares: (1 + w) norms, the sqrt(d) embedding scale, softcaps, the q.k scale."""
    from kept.convert.families.base import hf_config

    c = hf_config(cfg, path)
    if getattr(c, "use_bidirectional_attention", False):
        raise CheckpointError(f"{path}: use_bidirectional_attention=true (an encoder): stock Llama is causal")
    div = []
    for key, what in (("attn_logit_softcapping", "attention scores"), ("final_logit_softcapping", "final logits")):
        if getattr(c, key, None):
            div.append(("attention" if key.startswith("attn") else "head",
                        f"{what} softcapped at {getattr(c, key)} (tanh) in the source: dropped"))
    act = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", "gelu_pytorch_tanh")
    scalar = getattr(c, "query_pre_attn_scalar", None)
    arch = llama_like(cfg, path, family, norm_offset=1.0, embed_scale=float(np.float32(c.hidden_size ** 0.5)),
                      hidden_act=act, attn_scale=None if scalar is None else float(scalar) ** -0.5,
                      qkv_bias=bool(getattr(c, "attention_bias", False)), o_bias=bool(getattr(c, "attention_bias", False)),
                      **kw)
    return replace(arch, divergent=arch.divergent + tuple(div))


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return gemma_arch(cfg, path, cfg["model_type"])


FAMILY = llama_family("gemma", read_arch, *LLAMA_CORE, "q.b", "k.b", "v.b", "o.b", hf_class="GemmaForCausalLM")
VAULTGEMMA = llama_family("vaultgemma", read_arch, *LLAMA_CORE, "q.b", "k.b", "v.b", "o.b",
                          extra={"ln2.w": "model.layers.{i}.pre_feedforward_layernorm.weight"},
                          hf_class="VaultGemmaForCausalLM")
