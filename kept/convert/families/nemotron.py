"""Nemotron (``NemotronForCausalLM``: Nemotron-4/Minitron): ``LayerNorm1P`` (a LayerNorm whose gain is ``1 + w``,
with beta), a non-gated squared-ReLU MLP (``up_proj`` / ``down_proj``), partial rotary (0.5), optional biases.
Centred and folded as Orion's ``exact`` with the gain ``w + 1``: exact up to the final norm's logit offset, with
``relu2`` kept (transformers only: relu2 has no SiLU form, so ``mlp_target='runtimes'`` is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import SEQUENTIAL_NORMS, Arch, Runtime, hf_config, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    return llama_like(cfg, path, "nemotron", norm_kind="layer", norm_bias=True, norm_offset=1.0, gated_mlp=False,
                      qkv_bias=bool(c.attention_bias), o_bias=bool(c.attention_bias), mlp_bias=bool(c.mlp_bias))


FAMILY = llama_family(
    "nemotron", read_arch, "embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b", "down.w", "down.b",
    "ln1.w", "ln1.b", "ln2.w", "ln2.b", "final.w", "final.b", "head.w",
    extra={"fc1.w": f"{_L}.mlp.up_proj.weight", "fc1.b": f"{_L}.mlp.up_proj.bias"},
    hf_class="NemotronForCausalLM",
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm", norm_sites=SEQUENTIAL_NORMS),
)
