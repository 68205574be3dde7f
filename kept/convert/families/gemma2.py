"""Gemma 2 (``Gemma2ForCausalLM``) and Gemma 3's text model (``Gemma3ForCausalLM``, ``gemma3_text``): Gemma's
exact parts (``(1 + w)`` norms, sqrt(d) embedding scale with an untied head, gated GELU, the q.k scale
``query_pre_attn_scalar ** -0.5`` folded into q_proj) plus what stock Llama cannot hold: the sandwich norms on the
attention and MLP outputs (each replaced by a per-channel scale fitted on calibration text, folded into o_proj /
down_proj), the softcaps (dropped), the alternating sliding windows (exact only within the window), and for
Gemma 3 the q/k norms (fitted scales folded into q/k) and the local layers' own RoPE base (10000; Llama rotates
every layer with the global layers' base)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, fold_runtime, hf_config, llama_family
from kept.convert.families.gemma import gemma_arch

_L = "model.layers.{i}"
SANDWICH = {"ln2.w": f"{_L}.pre_feedforward_layernorm.weight", "pn1.w": f"{_L}.post_attention_layernorm.weight",
            "pn2.w": f"{_L}.post_feedforward_layernorm.weight"}


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    gemma3 = cfg["model_type"] == "gemma3_text"
    arch = gemma_arch(cfg, path, cfg["model_type"], folds=("q", "k", "o", "down") if gemma3 else ("o", "down"))
    rope = getattr(hf_config(cfg, path), "rope_parameters", None) or {}
    local, full = rope.get("sliding_attention"), rope.get("full_attention")
    if gemma3 and local and full and local != full:
        div = (("rope", f"local (sliding) layers rotate with base {local.get('rope_theta')}, global layers with "
                       f"{full.get('rope_theta')}: Llama rotates every layer with the global base"),)
        arch = replace(arch, divergent=arch.divergent + div)
    return arch


_ALL = ("embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "ln1.w", "final.w", "head.w")
FAMILY = llama_family("gemma2", read_arch, *_ALL, "q.b", "k.b", "v.b", "o.b", extra=SANDWICH,
                      hf_class="Gemma2ForCausalLM",
                      runtime=fold_runtime(o="post_attention_layernorm", down="post_feedforward_layernorm"))
GEMMA3 = llama_family("gemma3_text", read_arch, *_ALL, "q.b", "k.b", "v.b", "o.b", "qn.w", "kn.w", extra=SANDWICH,
                      hf_class="Gemma3ForCausalLM",
                      runtime=fold_runtime(q="self_attn.q_norm", k="self_attn.k_norm", o="post_attention_layernorm",
                                           down="post_feedforward_layernorm"))
