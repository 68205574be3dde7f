"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): Llama with biases on q, k and v but not on o: ``attention_bias`` with a
zero o_proj bias holds it exactly. Tied embeddings (the small models) stay tied. ``use_sliding_window`` (off in the
published configs) would be exact within the window only; YaRN scaling (the 128k variants) carries over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, llama_family, llama_like


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "qwen2", qkv_bias=True, o_bias=False, mlp_bias=False)


FAMILY = llama_family("qwen2", read_arch, *LLAMA_CORE, "q.b", "k.b", "v.b", hf_class="Qwen2ForCausalLM")
