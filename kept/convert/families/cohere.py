"""Command-R (``CohereForCausalLM``) and Command-R7B / Aya-Expanse-2 (``Cohere2ForCausalLM``): a LayerNorm without
beta (centring makes it RMSNorm exactly) feeding attention and a gated SiLU MLP in parallel (no Llama equivalent:
made sequential, measured), interleaved RoPE (each head's q/k rows permuted to Llama's halves, exact), a logit
scale (folded into the head, untied). ``use_qk_norm`` (per-head q/k LayerNorm) is dropped and refused under
``exact``. Cohere2 adds sliding windows and applies no RoPE on its full-attention layers (Llama rotates them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, Arch, Runtime, hf_config, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    arch = llama_like(cfg, path, cfg["model_type"], norm_kind="layer", shared_norm=True, parallel_residual=True,
                      rotary_style="interleaved", logit_scale=float(c.logit_scale),
                      qk_layernorm=bool(getattr(c, "use_qk_norm", False)))
    types = getattr(c, "layer_types", None) or []
    if cfg["model_type"] == "cohere2" and "sliding_attention" in types and "full_attention" in types:
        nope = tuple(i for i, t in enumerate(types) if t == "full_attention")
        n = len(nope)
        arch = replace(arch, nope_layers=nope, divergent=arch.divergent + (
            ("rope", f"{n} full-attention layers apply no RoPE in the source; Llama rotates every layer"),))
    return arch


_ALL = ("embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b", "gate.w", "up.w", "down.w", "ln1.w",
        "final.w", "head.w")
_RT = Runtime(layer_prefix=f"{_L}.", final_norm="model.norm",
              norm_sites={"input_layernorm": ("input_layernorm", "post_attention_layernorm")})
_QK = {f"{_L}.self_attn.{n}_norm.weight": f"per-head {n} LayerNorm (use_qk_norm): no Llama equivalent" for n in "qk"}
FAMILY = llama_family("cohere", read_arch, *_ALL, hf_class="CohereForCausalLM", runtime=_RT,
                      dropped={**ROPE_BUFFERS, **_QK})
COHERE2 = llama_family("cohere2", read_arch, *_ALL, hf_class="Cohere2ForCausalLM", runtime=_RT)
