"""InternLM2 / InternLM2.5 (remote code ``InternLM2ForCausalLM``; kept never runs it: its plain-PyTorch port
:class:`kept.convert.remote.InternLM2ForCausalLM` is the reference). Llama under other names (``tok_embeddings``,
``attention.wqkv``/``wo``, ``feed_forward.w1``/``w3``/``w2`` = gate/up/down, ``attention_norm``/``ffn_norm``,
``output``) with q, k and v fused in ``wqkv`` grouped per KV head ``[q * g, k, v]``: split per group (a contiguous
split, as an old llamafy script did, mixes heads), exact. Linear and dynamic NTK RoPE scaling carry over. Its
SentencePiece tokenizer (no tokenizer.json) is rebuilt for the stock fast tokenizer, added specials
(``<|im_start|>``, ``[UNUSED_TOKEN_*]``) and chat template carried over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, check_dims, rope_scaling, special_ids
from kept.convert.remote import RemoteConfig

_L = "model.layers.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    heads, head_dim = check_dims(cfg, path)
    return Arch(
        family="internlm2", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim, rotary_dim=head_dim,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), rope_scaling=rope_scaling(cfg, path),
        max_position_embeddings=cfg["max_position_embeddings"], norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        norm_weight=True, norm_bias=False, norm_kind="rms", hidden_act=cfg.get("hidden_act", "silu"),
        qkv_layout="groups", qkv_bias=bool(cfg.get("bias")), o_bias=bool(cfg.get("bias")),
        tied=bool(cfg.get("tie_word_embeddings", False)), torch_dtype=cfg.get("torch_dtype"),
        special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="internlm2",
    model_types=("internlm2",),
    read_arch=read_arch,
    tensors={
        "embed": ("model.tok_embeddings.weight",),
        "qkv.w": (f"{_L}.attention.wqkv.weight",),
        "qkv.b": (f"{_L}.attention.wqkv.bias",),
        "o.w": (f"{_L}.attention.wo.weight",),
        "o.b": (f"{_L}.attention.wo.bias",),
        "gate.w": (f"{_L}.feed_forward.w1.weight",),
        "up.w": (f"{_L}.feed_forward.w3.weight",),
        "down.w": (f"{_L}.feed_forward.w2.weight",),
        "ln1.w": (f"{_L}.attention_norm.weight",),
        "ln2.w": (f"{_L}.ffn_norm.weight",),
        "final.w": ("model.norm.weight",),
        "head.w": ("output.weight",),
    },
    dropped={f"{_L}.attention.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta"},
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="model.norm",
                    model_class="kept.convert.remote:InternLM2ForCausalLM"),
    teacher_config=lambda cfg, path: RemoteConfig.from_dict(cfg),
    tokenizer="sentencepiece",
    hf_class="InternLM2ForCausalLM",
)
