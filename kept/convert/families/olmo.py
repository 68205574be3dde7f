"""OLMo-1 in the ``-hf`` layout (``OlmoForCausalLM``): LayerNorm with neither gamma nor beta, computed in float32.

Mean-centring the stream makes every norm exactly RMSNorm with g = 1: no biases, no final offset. Tied embeddings
stay tied under centring, since with g = 1 the final normed state is orthogonal to the all-ones direction, so
centred rows give the same logits (OLMo-1B ties them). ``clip_qkv`` (clamping q, k and v) has no Llama equivalent:
refused under ``exact``, dropped and measured otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, Arch, Family, Runtime, check_dims, hf_config, layout, rope_setting
from kept.convert.families.base import rope_scaling, special_ids
from kept.errors import CheckpointError

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    if cfg.get("attention_bias"):
        raise CheckpointError(f"{path}: attention_bias=true is not an OLMo-1 layout")
    return Arch(
        family="olmo", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim, rotary_dim=head_dim,
        rope_theta=rope_setting(cfg, "rope_theta", default=10000.0), rope_scaling=rope_scaling(cfg, path),
        max_position_embeddings=cfg["max_position_embeddings"],
        norm_eps=1e-5,  # OlmoLayerNorm's eps is fixed
        norm_weight=False, norm_bias=False, hidden_act=cfg.get("hidden_act", "silu"),
        tied=bool(cfg.get("tie_word_embeddings", False)), clip_qkv=cfg.get("clip_qkv"),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="olmo",
    model_types=("olmo",),
    read_arch=read_arch,
    tensors=layout("embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "head.w"),
    dropped=ROPE_BUFFERS,
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm"),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="OlmoForCausalLM",
)
