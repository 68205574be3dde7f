"""Falcon (``FalconForCausalLM``) in its three layouts, read from ``query_key_value``'s rows: Falcon-7B's multi-query
``[q heads | k | v]``, Falcon-40B/180B's ``new_decoder_architecture`` grouped per KV head ``[q * g, k, v]`` (split
per group, not contiguously), and the multi-head ``[head: q, k, v]``. LayerNorm with beta (centred and folded), a
non-gated GELU MLP, tied embeddings. The block is parallel (``x + attn(n1 x) + mlp(n2 x)``, one shared LayerNorm
on 7B, ``ln_attn``/``ln_mlp`` on 40B): no Llama equivalent, made sequential and measured. ALiBi variants
(Falcon-RW) are refused: stock Llama has no ALiBi."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, hf_config, llama_like
from kept.errors import CheckpointError

_L = "transformer.h.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    if c.alibi or not c.rotary:
        raise CheckpointError(f"{path}: alibi=true: Falcon with ALiBi positions (Falcon-RW) has no stock Llama "
                              "equivalent (Llama holds only RoPE)")
    new = bool(c.new_decoder_architecture)
    layout, kv = ("groups", c.num_kv_heads) if new else ("blocks", 1) if c.multi_query else ("heads", c.num_kv_heads)
    two = new and (c.num_ln_in_parallel_attn or 2) == 2
    parallel = new or bool(c.parallel_attn)
    return llama_like(cfg, path, "falcon", intermediate_size=c.ffn_hidden_size, num_kv_heads=kv, qkv_layout=layout,
                      norm_kind="layer", norm_bias=True, shared_norm=parallel and not two,
                      parallel_residual=parallel, gated_mlp=False, hidden_act=c.activation, qkv_bias=bool(c.bias),
                      o_bias=bool(c.bias), mlp_bias=bool(c.bias))


def _names(cfg_two: bool) -> dict[str, tuple[str, ...]]:
    ln1, ln2 = ("ln_attn", "ln_mlp") if cfg_two else ("input_layernorm", "post_attention_layernorm")
    return {
        "embed": ("transformer.word_embeddings.weight",),
        "qkv.w": (f"{_L}.self_attention.query_key_value.weight",),
        "qkv.b": (f"{_L}.self_attention.query_key_value.bias",),
        "o.w": (f"{_L}.self_attention.dense.weight",),
        "o.b": (f"{_L}.self_attention.dense.bias",),
        "fc1.w": (f"{_L}.mlp.dense_h_to_4h.weight",),
        "fc1.b": (f"{_L}.mlp.dense_h_to_4h.bias",),
        "down.w": (f"{_L}.mlp.dense_4h_to_h.weight",),
        "down.b": (f"{_L}.mlp.dense_4h_to_h.bias",),
        "final.w": ("transformer.ln_f.weight",),
        "final.b": ("transformer.ln_f.bias",),
        "head.w": ("lm_head.weight",),
        "ln1.w": (f"{_L}.{ln1}.weight", f"{_L}.input_layernorm.weight"),
        "ln1.b": (f"{_L}.{ln1}.bias", f"{_L}.input_layernorm.bias"),
        "ln2.w": (f"{_L}.{ln2}.weight",),
        "ln2.b": (f"{_L}.{ln2}.bias",),
    }


FAMILY = Family(
    name="falcon",
    model_types=("falcon", "RefinedWeb", "RefinedWebModel"),
    read_arch=read_arch,
    tensors={**_names(False), "ln1.w": (f"{_L}.input_layernorm.weight", f"{_L}.ln_attn.weight"),
             "ln1.b": (f"{_L}.input_layernorm.bias", f"{_L}.ln_attn.bias"),
             "ln2.w": (f"{_L}.post_attention_layernorm.weight", f"{_L}.ln_mlp.weight"),
             "ln2.b": (f"{_L}.post_attention_layernorm.bias", f"{_L}.ln_mlp.bias")},
    dropped={f"{_L}.self_attention.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
             "transformer.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta"},
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="transformer.ln_f",
                    norm_sites={"input_layernorm": ("input_layernorm", "post_attention_layernorm"),
                                "ln_attn": ("input_layernorm",), "ln_mlp": ("post_attention_layernorm",),
                                "post_attention_layernorm": ("post_attention_layernorm",)}),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="FalconForCausalLM",
)
