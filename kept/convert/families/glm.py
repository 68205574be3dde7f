"""GLM-4 (``GlmForCausalLM``: GLM-4-9B) and GLM-4-0414 (``Glm4ForCausalLM``): Llama with gate and up fused as
``gate_up_proj`` (``[gate | up]``), q/k/v biases, and partial interleaved RoPE (half of each head as pairs
(2i, 2i + 1)): row selections and a per-head permutation, exact. GLM-4-0414 adds norms on the attention and MLP
outputs (sandwich): per-channel scales fitted on calibration text, folded into o_proj / down_proj (approximate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, fold_runtime, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, cfg["model_type"], fused_gate_up=True, rotary_style="interleaved", o_bias=False,
                      folds=("o", "down") if cfg["model_type"] == "glm4" else ())


_ALL = ("embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "down.w", "ln1.w", "ln2.w", "final.w", "head.w")
_FUSED = {"gate_up.w": f"{_L}.mlp.gate_up_proj.weight"}
FAMILY = llama_family("glm", read_arch, *_ALL, extra=_FUSED, hf_class="GlmForCausalLM")
GLM4 = llama_family("glm4", read_arch, *_ALL, hf_class="Glm4ForCausalLM",
                    extra={**_FUSED, "pn1.w": f"{_L}.post_self_attn_layernorm.weight",
                           "pn2.w": f"{_L}.post_mlp_layernorm.weight"},
                    runtime=fold_runtime(o="post_self_attn_layernorm", down="post_mlp_layernorm"))
