"""Phi-1 / 1.5 / 2 (``PhiForCausalLM``): one LayerNorm (gamma, beta) per block feeding attention and a non-gated
GELU MLP in parallel (``x + attn(n x) + mlp(n x)``: no Llama equivalent, made sequential and measured), partial
rotary, biases on every linear layer and on the LM head (a logit offset, like the final norm's beta), optional
per-head ``qk_layernorm`` (refused under ``exact``, dropped and measured otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, Arch, Family, Runtime, check_dims, hf_config, rope_setting
from kept.convert.families.base import rope_scaling, rotary_dim, special_ids

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    return Arch(
        family="phi", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
        rotary_dim=rotary_dim(head_dim, rope_setting(cfg, "partial_rotary_factor", default=0.5), path),
        rope_theta=rope_setting(cfg, "rope_theta", default=10000.0), rope_scaling=rope_scaling(cfg, path),
        max_position_embeddings=cfg["max_position_embeddings"], norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        norm_weight=True, norm_bias=True, shared_norm=True, parallel_residual=True, gated_mlp=False,
        hidden_act=cfg.get("hidden_act", "gelu_new"), qkv_bias=True, o_bias=True, mlp_bias=True, head_bias=True,
        tied=bool(cfg.get("tie_word_embeddings", False)), qk_layernorm=bool(cfg.get("qk_layernorm", False)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="phi",
    model_types=("phi",),
    read_arch=read_arch,
    tensors={
        "embed": ("model.embed_tokens.weight",),
        "q.w": (f"{_L}.self_attn.q_proj.weight",),
        "q.b": (f"{_L}.self_attn.q_proj.bias",),
        "k.w": (f"{_L}.self_attn.k_proj.weight",),
        "k.b": (f"{_L}.self_attn.k_proj.bias",),
        "v.w": (f"{_L}.self_attn.v_proj.weight",),
        "v.b": (f"{_L}.self_attn.v_proj.bias",),
        "o.w": (f"{_L}.self_attn.dense.weight",),
        "o.b": (f"{_L}.self_attn.dense.bias",),
        "fc1.w": (f"{_L}.mlp.fc1.weight",),
        "fc1.b": (f"{_L}.mlp.fc1.bias",),
        "down.w": (f"{_L}.mlp.fc2.weight",),
        "down.b": (f"{_L}.mlp.fc2.bias",),
        "ln1.w": (f"{_L}.input_layernorm.weight",),
        "ln1.b": (f"{_L}.input_layernorm.bias",),
        "final.w": ("model.final_layernorm.weight",),
        "final.b": ("model.final_layernorm.bias",),
        "head.w": ("lm_head.weight",),
        "head.b": ("lm_head.bias",),
    },
    dropped={
        f"{_L}.self_attn.q_layernorm.weight": "per-head q LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.q_layernorm.bias": "per-head q LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.k_layernorm.weight": "per-head k LayerNorm (qk_layernorm): no Llama equivalent",
        f"{_L}.self_attn.k_layernorm.bias": "per-head k LayerNorm (qk_layernorm): no Llama equivalent",
        **ROPE_BUFFERS,
    },
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.final_layernorm",
                    norm_sites={"input_layernorm": ("input_layernorm", "post_attention_layernorm")}),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="PhiForCausalLM",
)
