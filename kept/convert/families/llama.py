"""Llama (``LlamaForCausalLM``) itself, and every converted output: the identity mapping. The converter's checks,
card and fidelity report still apply; optional q/k/v/o biases (``attention_bias``) and MLP biases (``mlp_bias``),
tied embeddings and every RoPE scaling Llama computes carry over unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, LLAMA_RUNTIME, ROPE_BUFFERS, Arch, Family, hf_config, layout
from kept.convert.families.base import llama_like

BIASES = ("q.b", "k.b", "v.b", "o.b", "gate.b", "up.b", "down.b")


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "llama")


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    read_arch=read_arch,
    tensors=layout(*LLAMA_CORE, *BIASES),
    dropped=ROPE_BUFFERS,
    runtime=LLAMA_RUNTIME,
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="LlamaForCausalLM",
)
