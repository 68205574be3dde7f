"""Qwen3 (``Qwen3ForCausalLM``): Llama plus an RMSNorm on each head of q and of k before RoPE. Stock Llama has no
such norm: each is replaced by a per-channel scale fitted on the source's own activations over calibration text
(least squares, per head and channel) and folded into q_proj / k_proj -- approximate, measured. Everything else
(GQA, tied small models, YaRN) is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, fold_runtime, llama_family, llama_like


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    bias = bool(cfg.get("attention_bias", False))
    return llama_like(cfg, path, "qwen3", qkv_bias=bias, o_bias=bias, folds=("q", "k"))


FAMILY = llama_family("qwen3", read_arch, *LLAMA_CORE, "q.b", "k.b", "v.b", "o.b", "qn.w", "kn.w",
                      hf_class="Qwen3ForCausalLM", runtime=fold_runtime(q="self_attn.q_norm", k="self_attn.k_norm"))
