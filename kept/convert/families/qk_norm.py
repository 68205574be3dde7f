"""Llama plus per-head q/k RMSNorms, replaced by per-channel scales fitted on calibration text and folded into
q_proj / k_proj (approximate, measured): Apertus (``ApertusForCausalLM``: also a non-gated xIELU MLP whose
per-layer parameters become the Llama MLP's own ``act_fn`` parameters -- transformers computes them, no other
runtime does) and Hunyuan dense (``HunYuanDenseV1ForCausalLM``, whose q/k norms act after RoPE: the fitted scale
is averaged over each rotated pair so that it commutes with the rotation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, fold_runtime, llama_family, llama_like

_L = "model.layers.{i}"


def apertus(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "apertus", gated_mlp=False, folds=("q", "k"))


def hunyuan(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "hunyuan_v1_dense", folds=("q", "k"), qk_norm_after_rope=True)


APERTUS = llama_family(
    "apertus", apertus, "embed", "q.w", "k.w", "v.w", "o.w", "down.w", "qn.w", "kn.w", "final.w", "head.w",
    extra={"fc1.w": f"{_L}.mlp.up_proj.weight", "ln1.w": f"{_L}.attention_layernorm.weight",
           "ln2.w": f"{_L}.feedforward_layernorm.weight", **{f"act.{k}": f"{_L}.mlp.act_fn.{k}" for k in
                                                               ("alpha_p", "alpha_n", "beta", "eps")}},
    hf_class="ApertusForCausalLM", runtime=fold_runtime(q="self_attn.q_norm", k="self_attn.k_norm"))
HUNYUAN = llama_family(
    "hunyuan_v1_dense", hunyuan, *LLAMA_CORE,
    extra={"qn.w": f"{_L}.self_attn.query_layernorm.weight", "kn.w": f"{_L}.self_attn.key_layernorm.weight"},
    hf_class="HunYuanDenseV1ForCausalLM",
    runtime=fold_runtime(q="self_attn.query_layernorm", k="self_attn.key_layernorm"))
