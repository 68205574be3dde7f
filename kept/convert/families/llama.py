"""Llama (``LlamaForCausalLM``) itself, and every converted output: the identity mapping. The converter's checks,
card and fidelity report still apply; optional q/k/v/o biases (``attention_bias``) and MLP biases (``mlp_bias``),
tied embeddings and every RoPE scaling Llama computes carry over unchanged. InternLM3 (``internlm3``: transformers
runs it as ``LlamaForCausalLM``, same tensor names) is this family too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, llama_family, llama_like

BIASES = ("q.b", "k.b", "v.b", "o.b", "gate.b", "up.b", "down.b")


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, cfg.get("model_type", "llama"))


FAMILY = llama_family("llama", read_arch, *LLAMA_CORE, *BIASES, hf_class="LlamaForCausalLM")
INTERNLM3 = llama_family("internlm3", read_arch, *LLAMA_CORE, *BIASES, hf_class="LlamaForCausalLM")
