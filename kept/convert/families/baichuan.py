"""Baichuan2-7B (remote code ``BaichuanForCausalLM``; kept never runs it: its plain-PyTorch port
:class:`kept.convert.remote.BaichuanForCausalLM` is the reference). Llama with q, k and v fused in ``W_pack`` as
``[q | k | v]`` (row blocks, exact) and ``NormHead``: its LM-head rows are L2-normalised on the first eval forward,
so the converted ``lm_head`` holds the normalised rows (exact; an unnormalised copy would scale every logit by its
row's norm). The 13B models (hidden_size 5120) use ALiBi positions, which stock Llama cannot hold: refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, check_dims, special_ids
from kept.convert.remote import RemoteConfig
from kept.errors import CheckpointError

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    if cfg["hidden_size"] == 5120:
        raise CheckpointError(f"{path}: hidden_size 5120 is Baichuan 13B, whose published modeling code encodes "
                              "positions with ALiBi; stock Llama holds only RoPE, so it cannot be converted")
    return Arch(
        family="baichuan", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, rotary_dim=head_dim, rope_theta=10000.0,
        max_position_embeddings=cfg["max_position_embeddings"], norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        norm_weight=True, norm_bias=False, norm_kind="rms", hidden_act=cfg.get("hidden_act", "silu"),
        qkv_layout="blocks", head_norm=True, tied=bool(cfg.get("tie_word_embeddings", False)),
        torch_dtype=cfg.get("torch_dtype"), special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="baichuan",
    model_types=("baichuan",),
    read_arch=read_arch,
    tensors={
        "embed": ("model.embed_tokens.weight",),
        "qkv.w": (f"{_L}.self_attn.W_pack.weight",),
        "o.w": (f"{_L}.self_attn.o_proj.weight",),
        **{f"{p}.w": (f"{_L}.mlp.{p}_proj.weight",) for p in ("gate", "up", "down")},
        "ln1.w": (f"{_L}.input_layernorm.weight",),
        "ln2.w": (f"{_L}.post_attention_layernorm.weight",),
        "final.w": ("model.norm.weight",),
        "head.w": ("lm_head.weight",),
    },
    dropped={f"{_L}.self_attn.rotary_emb.inv_freq": "RoPE buffer, recomputed (base 10000)"},
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm",
                    model_class="kept.convert.remote:BaichuanForCausalLM"),
    teacher_config=lambda cfg, path: RemoteConfig.from_dict(cfg),
    tokenizer="sentencepiece",
    hf_class="BaichuanForCausalLM",
)
