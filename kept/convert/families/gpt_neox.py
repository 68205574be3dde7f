"""GPT-NeoX (Pythia; ``GPTNeoXForCausalLM``): LayerNorm with gamma and beta, a fused per-head interleaved QKV
projection (rows ``[head, (q|k|v), head_dim]``), partial rotary (``rotary_pct``), a non-gated GELU MLP, biases on
every linear layer, and (Pythia) a parallel residual ``x + attn(n1 x) + mlp(n2 x)``: no Llama equivalent, made
sequential and measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import SEQUENTIAL_NORMS, Arch, Family, Runtime, check_dims, hf_config, rope_setting
from kept.convert.families.base import rope_scaling, rotary_dim, special_ids

_L = "gpt_neox.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    bias = bool(cfg.get("attention_bias", True))
    return Arch(
        family="gpt_neox", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim,
        rotary_dim=rotary_dim(head_dim, rope_setting(cfg, "partial_rotary_factor", "rotary_pct", default=0.25), path),
        rope_theta=rope_setting(cfg, "rope_theta", "rotary_emb_base", default=10000.0),
        rope_scaling=rope_scaling(cfg, path),
        max_position_embeddings=cfg["max_position_embeddings"], norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        norm_weight=True, norm_bias=True, parallel_residual=bool(cfg.get("use_parallel_residual", True)),
        gated_mlp=False, hidden_act=cfg.get("hidden_act", "gelu"), qkv_layout="heads", qkv_bias=bias, o_bias=bias,
        mlp_bias=True, tied=bool(cfg.get("tie_word_embeddings", False)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    read_arch=read_arch,
    tensors={
        "embed": ("gpt_neox.embed_in.weight",),
        "qkv.w": (f"{_L}.attention.query_key_value.weight",),
        "qkv.b": (f"{_L}.attention.query_key_value.bias",),
        "o.w": (f"{_L}.attention.dense.weight",),
        "o.b": (f"{_L}.attention.dense.bias",),
        "fc1.w": (f"{_L}.mlp.dense_h_to_4h.weight",),
        "fc1.b": (f"{_L}.mlp.dense_h_to_4h.bias",),
        "down.w": (f"{_L}.mlp.dense_4h_to_h.weight",),
        "down.b": (f"{_L}.mlp.dense_4h_to_h.bias",),
        "ln1.w": (f"{_L}.input_layernorm.weight",),
        "ln1.b": (f"{_L}.input_layernorm.bias",),
        "ln2.w": (f"{_L}.post_attention_layernorm.weight",),
        "ln2.b": (f"{_L}.post_attention_layernorm.bias",),
        "final.w": ("gpt_neox.final_layer_norm.weight",),
        "final.b": ("gpt_neox.final_layer_norm.bias",),
        "head.w": ("embed_out.weight", "lm_head.weight"),  # the hub's name, transformers 5's name
    },
    dropped={
        f"{_L}.attention.bias": "causal-mask buffer of older checkpoints",
        f"{_L}.attention.masked_bias": "mask-fill buffer of older checkpoints",
        f"{_L}.attention.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
        "gpt_neox.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    },
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="gpt_neox.final_layer_norm", norm_sites=SEQUENTIAL_NORMS),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="GPTNeoXForCausalLM",
)
