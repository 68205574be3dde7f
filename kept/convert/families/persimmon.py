"""Persimmon / Fuyu's text model (``PersimmonForCausalLM``): LayerNorm with beta, a fused per-head QKV
(``[head: q, k, v]``, biased), partial rotary (0.5), a non-gated squared-ReLU MLP with biases, and per-head q/k
LayerNorms (``qk_layernorm``: no Llama equivalent, dropped and measured; refused under ``exact``). relu2 has no SiLU
form: the output keeps it (transformers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, SEQUENTIAL_NORMS, Arch, Family, Runtime, hf_config, llama_like

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    return llama_like(cfg, path, "persimmon", num_kv_heads=c.num_attention_heads, norm_kind="layer", norm_bias=True,
                      gated_mlp=False, qkv_layout="heads", qkv_bias=True, o_bias=True, mlp_bias=True,
                      qk_layernorm=bool(c.qk_layernorm))


FAMILY = Family(
    name="persimmon",
    model_types=("persimmon",),
    read_arch=read_arch,
    tensors={
        "embed": ("model.embed_tokens.weight",),
        "qkv.w": (f"{_L}.self_attn.query_key_value.weight",),
        "qkv.b": (f"{_L}.self_attn.query_key_value.bias",),
        "o.w": (f"{_L}.self_attn.dense.weight",),
        "o.b": (f"{_L}.self_attn.dense.bias",),
        "fc1.w": (f"{_L}.mlp.dense_h_to_4h.weight",),
        "fc1.b": (f"{_L}.mlp.dense_h_to_4h.bias",),
        "down.w": (f"{_L}.mlp.dense_4h_to_h.weight",),
        "down.b": (f"{_L}.mlp.dense_4h_to_h.bias",),
        **{f"{n}.{k}": (f"{_L}.{site}.{'weight' if k == 'w' else 'bias'}",) for n, site in
           (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")) for k in "wb"},
        "final.w": ("model.final_layernorm.weight",),
        "final.b": ("model.final_layernorm.bias",),
        "head.w": ("lm_head.weight",),
    },
    dropped={**ROPE_BUFFERS, **{f"{_L}.self_attn.{n}_layernorm.{k}": f"per-head {n} LayerNorm (qk_layernorm): no "
                                "Llama equivalent" for n in "qk" for k in ("weight", "bias")}},
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.final_layernorm", norm_sites=SEQUENTIAL_NORMS),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="PersimmonForCausalLM",
)
