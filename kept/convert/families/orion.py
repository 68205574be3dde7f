"""Orion (OrionStarAI/Orion-14B-*): the Llama decoder with LayerNorm (gamma and beta) at every norm site.

Tensor names are Llama's plus the norm biases; q/k are already in Llama's rotate-half layout. The runtime is
transformers' ``StableLmDecoderLayer`` configured to compute exactly Orion (:func:`kept.orion.stablelm_config`),
so no remote code runs. Config checks (MHA, SiLU, untied) are :func:`kept.orion.read_orion_config`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, no_rope_scaling

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    from kept.orion import validate_orion_config

    cfg = validate_orion_config(cfg, path)
    no_rope_scaling(cfg, path)
    heads = cfg["num_attention_heads"]
    return Arch(
        family="orion", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads", heads), head_dim=cfg["hidden_size"] // heads,
        rotary_dim=cfg["hidden_size"] // heads, rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position_embeddings=cfg["max_position_embeddings"],
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),  # the key says "rms", the module is LayerNorm
        norm_weight=True, norm_bias=True, torch_dtype=cfg.get("torch_dtype"),
        special_ids={"bos_token_id": cfg.get("bos_token_id", 1), "eos_token_id": cfg.get("eos_token_id", 2),
                     "pad_token_id": cfg.get("pad_token_id", 0)},
    )


def teacher_config(cfg: dict[str, Any], path: Path) -> Any:
    from kept.orion import stablelm_config, validate_orion_config

    return stablelm_config(validate_orion_config(cfg, path))


FAMILY = Family(
    name="orion",
    model_types=("orion",),
    read_arch=read_arch,
    tensors={
        "embed": ("model.embed_tokens.weight",),
        "q.w": (f"{_L}.self_attn.q_proj.weight",),
        "k.w": (f"{_L}.self_attn.k_proj.weight",),
        "v.w": (f"{_L}.self_attn.v_proj.weight",),
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
        f"{_L}.self_attn.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
        "model.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    },
    runtime=Runtime(module="stablelm", layer_class="StableLmDecoderLayer", rotary_class="StableLmRotaryEmbedding",
                    layer_prefix=f"{_L}.", norm_sites={"input_layernorm": ("input_layernorm",),
                                                     "post_attention_layernorm": ("post_attention_layernorm",)}),
    teacher_config=teacher_config,
    tokenizer="sentencepiece",
    hf_class="StableLmForCausalLM",  # configured as Orion (no remote code); see kept.orion
)
