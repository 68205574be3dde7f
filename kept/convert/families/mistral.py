"""Mistral (``MistralForCausalLM``: Mistral-7B v0.1-v0.3, Mistral-Nemo, Small) and Ministral (``MinistralForCausalLM``:
Ministral-8B): Llama's computation and tensor names, no biases. A ``sliding_window`` narrower than the context
(v0.1: 4096 of 32768; Ministral's interleaved windows) has no Llama equivalent: exact within the window, measured
beyond it; v0.2 and later set none (exact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, llama_family, llama_like


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, cfg["model_type"], qkv_bias=False, o_bias=False, mlp_bias=False)


FAMILY = llama_family("mistral", read_arch, *LLAMA_CORE, hf_class="MistralForCausalLM")
MINISTRAL = llama_family("ministral", read_arch, *LLAMA_CORE, hf_class="MinistralForCausalLM")
