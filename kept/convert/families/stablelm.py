"""StableLM (``StableLmForCausalLM``: StableLM-3B-4e1t, StableLM-2): LayerNorm with gamma and beta, partial rotary,
optional q/k/v bias, optional parallel residual (then one LayerNorm feeds both branches) and optional per-head
``qk_layernorm`` (no Llama equivalent: refused under ``exact``, dropped and measured otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, SEQUENTIAL_NORMS, Arch, Family, Runtime, check_dims, hf_config
from kept.convert.families.base import layout, rope_scaling, rope_setting, rotary_dim, special_ids

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    parallel = bool(cfg.get("use_parallel_residual", False))
    return Arch(
        family="stablelm", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
        rotary_dim=rotary_dim(head_dim, rope_setting(cfg, "partial_rotary_factor", default=0.25), path),
        rope_theta=rope_setting(cfg, "rope_theta", default=10000.0), rope_scaling=rope_scaling(cfg, path),
        max_position_embeddings=cfg["max_position_embeddings"], norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        norm_weight=True, norm_bias=True, shared_norm=parallel, parallel_residual=parallel,
        hidden_act=cfg.get("hidden_act", "silu"), qkv_bias=bool(cfg.get("use_qkv_bias", False)),
        tied=bool(cfg.get("tie_word_embeddings", False)), qk_layernorm=bool(cfg.get("qk_layernorm", False)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="stablelm",
    model_types=("stablelm",),  # not the pre-merge remote-code "stablelm_epoch" layout
    read_arch=read_arch,
    tensors=layout("embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "gate.w", "up.w", "down.w", "ln1.w",
                   "ln1.b", "ln2.w", "ln2.b", "final.w", "final.b", "head.w"),
    dropped={
        f"{_L}.self_attn.q_layernorm.norms.{{h}}.weight": "per-head q LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.k_layernorm.norms.{{h}}.weight": "per-head k LayerNorm (qk_layernorm): no Llama equivalent",
        **ROPE_BUFFERS,
    },
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm", norm_sites=SEQUENTIAL_NORMS),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="StableLmForCausalLM",
)
