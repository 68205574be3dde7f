"""Orion (OrionStarAI/Orion-14B-*): the Llama decoder with LayerNorm (gamma and beta) at every norm site.

Tensor names are Llama's plus the norm biases; q/k are already in Llama's rotate-half layout. The runtime is
transformers' ``StableLmDecoderLayer`` configured to compute exactly Orion (:func:`kept.orion.stablelm_config`),
so no remote code runs. Config checks (MHA, SiLU, untied) are :func:`kept.orion.read_orion_config`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import ROPE_BUFFERS, SEQUENTIAL_NORMS, Arch, Family, Runtime, layout, no_rope_scaling

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
    tensors=layout("embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "ln1.w", "ln1.b", "ln2.w",
                   "ln2.b", "final.w", "final.b", "head.w"),
    dropped=ROPE_BUFFERS,
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm", norm_sites=SEQUENTIAL_NORMS),
    teacher_config=teacher_config,
    tokenizer="sentencepiece",
    hf_class="StableLmForCausalLM",  # configured as Orion (no remote code); see kept.orion
)
