"""StarCoder2 (``Starcoder2ForCausalLM``): LayerNorm with gamma and beta, biases on every projection, a non-gated
GELU (tanh) MLP (``c_fc`` / ``c_proj``), GQA, tied embeddings. Centred and folded as Orion's ``exact``: exact up to
the final norm's logit offset ``head @ beta_f``, with the GELU kept (transformers only; ``mlp_target='runtimes'``
writes the SiLU form). The published ``sliding_window`` (4096 of 16384) is exact only within the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import SEQUENTIAL_NORMS, Arch, Runtime, hf_config, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    bias = bool(hf_config(cfg, path).use_bias)
    return llama_like(cfg, path, "starcoder2", norm_kind="layer", norm_bias=True, gated_mlp=False, qkv_bias=bias,
                      o_bias=bias, mlp_bias=bias)


FAMILY = llama_family(
    "starcoder2", read_arch, "embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b", "ln1.w", "ln1.b",
    "ln2.w", "ln2.b", "final.w", "final.b", "head.w",
    extra={"fc1.w": f"{_L}.mlp.c_fc.weight", "fc1.b": f"{_L}.mlp.c_fc.bias", "down.w": f"{_L}.mlp.c_proj.weight",
           "down.b": f"{_L}.mlp.c_proj.bias"},
    hf_class="Starcoder2ForCausalLM",
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm", norm_sites=SEQUENTIAL_NORMS),
)
