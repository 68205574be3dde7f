"""Mistral (``MistralForCausalLM``: Mistral-7B v0.1-v0.3, Mistral-Nemo, Small) and Ministral (``MinistralForCausalLM``:
Ministral-8B): Llama's computation and tensor names (Mistral ignores ``head_dim``-free configs' biases: none are
stored). A ``sliding_window`` narrower than the context (v0.1: 4096 of 32768; Ministral's interleaved windows) has
no Llama equivalent: exact within the window, measured beyond it; v0.2 and later set none (exact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, LLAMA_RUNTIME, ROPE_BUFFERS, Arch, Family, hf_config, layout
from kept.convert.families.base import llama_like


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, cfg["model_type"], qkv_bias=False, o_bias=False, mlp_bias=False)


def family(name: str, hf_class: str) -> Family:
    return Family(
        name=name,
        model_types=(name,),
        read_arch=read_arch,
        tensors=layout(*LLAMA_CORE),
        dropped=ROPE_BUFFERS,
        runtime=LLAMA_RUNTIME,
        teacher_config=hf_config,
        tokenizer="tokenizers",
        hf_class=hf_class,
    )


FAMILY = family("mistral", "MistralForCausalLM")
MINISTRAL = family("ministral", "MinistralForCausalLM")
