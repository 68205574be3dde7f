"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``): Llama with q, k and v fused as ``qkv_proj`` (rows
``[q | k | v]``) and gate and up fused as ``gate_up_proj`` (rows ``[gate | up]``, split by ``chunk(2)``): row
selections, exact. ``longrope`` (the 128k models) is computed by Llama as it is; with partial rotary (Phi-4-mini,
0.75) it becomes Llama's ``longrope`` over the permuted channels. Phi-3-mini-4k's ``sliding_window`` (2047) is exact
only within the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "phi3", qkv_layout="blocks", fused_gate_up=True, qkv_bias=False, o_bias=False)


FAMILY = llama_family("phi3", read_arch, "embed", "o.w", "down.w", "ln1.w", "ln2.w", "final.w", "head.w",
                      extra={"qkv.w": f"{_L}.self_attn.qkv_proj.weight", "gate_up.w": f"{_L}.mlp.gate_up_proj.weight"},
                      hf_class="Phi3ForCausalLM")
