"""StableLM (``StableLmForCausalLM``: StableLM-3B-4e1t, StableLM-2): LayerNorm with gamma and beta, partial rotary,
optional q/k/v bias, optional parallel residual (then one LayerNorm feeds both branches) and optional per-head
``qk_layernorm`` (no Llama equivalent: refused under ``exact``, dropped and measured otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, hf_config, no_rope_scaling, positive, rope_setting
from kept.convert.families.base import rotary_dim, special_ids
from kept.errors import CheckpointError

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    positive(cfg, path, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings")
    no_rope_scaling(cfg, path)
    heads = cfg["num_attention_heads"]
    if cfg["hidden_size"] % heads:
        raise CheckpointError(f"{path}: hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {heads}")
    head_dim = cfg["hidden_size"] // heads
    parallel = bool(cfg.get("use_parallel_residual", False))
    return Arch(
        family="stablelm", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
        rotary_dim=rotary_dim(head_dim, rope_setting(cfg, "partial_rotary_factor", default=0.25), path),
        rope_theta=rope_setting(cfg, "rope_theta", default=10000.0),
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
    tensors={
        "embed": ("model.embed_tokens.weight",),
        "q.w": (f"{_L}.self_attn.q_proj.weight",),
        "q.b": (f"{_L}.self_attn.q_proj.bias",),
        "k.w": (f"{_L}.self_attn.k_proj.weight",),
        "k.b": (f"{_L}.self_attn.k_proj.bias",),
        "v.w": (f"{_L}.self_attn.v_proj.weight",),
        "v.b": (f"{_L}.self_attn.v_proj.bias",),
        "o.w": (f"{_L}.self_attn.o_proj.weight",),
        "gate.w": (f"{_L}.mlp.gate_proj.weight",),
        "up.w": (f"{_L}.mlp.up_proj.weight",),
        "down.w": (f"{_L}.mlp.down_proj.weight",),
        "ln1.w": (f"{_L}.input_layernorm.weight",),
        "ln1.b": (f"{_L}.input_layernorm.bias",),
        "ln2.w": (f"{_L}.post_attention_layernorm.weight",),
        "ln2.b": (f"{_L}.post_attention_layernorm.bias",),
        "final.w": ("model.norm.weight",),
        "final.b": ("model.norm.bias",),
        "head.w": ("lm_head.weight",),
    },
    dropped={
        f"{_L}.self_attn.q_layernorm.norms.{{h}}.weight": "per-head q LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.k_layernorm.norms.{{h}}.weight": "per-head k LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
        "model.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    },
    runtime=Runtime(module="stablelm", layer_class="StableLmDecoderLayer", rotary_class="StableLmRotaryEmbedding",
                    layer_prefix=f"{_L}.", norm_sites={"input_layernorm": ("input_layernorm",),
                                                     "post_attention_layernorm": ("post_attention_layernorm",)}),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="StableLmForCausalLM",
)
