"""OLMo-2 (``Olmo2ForCausalLM``) and OLMo-3 (``Olmo3ForCausalLM``): post-norm blocks ``x + norm(attn(x))``,
``h + norm(mlp(h))`` with RMSNorms over the whole q and k projections. Stock Llama normalises the stream before
attention and MLP and holds no norm after them: its input norms get gains fitted so that they pass the raw stream,
and the q/k norms and the output norms become per-channel scales fitted on calibration text, folded into q_proj /
k_proj / o_proj / down_proj (approximate, measured). OLMo-3's sliding windows are exact only within the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, fold_runtime, llama_family, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, cfg["model_type"], pre_norm=False, folds=("q", "k", "o", "down"),
                      qk_norm_span="full")


_ALL = ("embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "qn.w", "kn.w", "final.w", "head.w")
_POST = {"pn1.w": f"{_L}.post_attention_layernorm.weight", "pn2.w": f"{_L}.post_feedforward_layernorm.weight"}
_RT = fold_runtime(q="self_attn.q_norm", k="self_attn.k_norm", o="post_attention_layernorm",
                   down="post_feedforward_layernorm")
FAMILY = llama_family("olmo2", read_arch, *_ALL, extra=_POST, hf_class="Olmo2ForCausalLM", runtime=_RT)
OLMO3 = llama_family("olmo3", read_arch, *_ALL, extra=_POST, hf_class="Olmo3ForCausalLM", runtime=_RT)
