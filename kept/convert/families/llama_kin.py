"""Llama's close kin, each exact: Helium (``HeliumForCausalLM``: interleaved RoPE, permuted to Llama's halves),
ERNIE 4.5 dense (``Ernie4_5ForCausalLM``: interleaved RoPE, ``use_bias`` on every projection, tied), Seed-OSS
(``SeedOssForCausalLM``: q/k/v biases, an optional o bias), Arcee AFM (``ArceeForCausalLM``: a non-gated squared-ReLU
MLP, kept: transformers only) and SmolLM3 (``SmolLM3ForCausalLM``: every fourth layer without RoPE -- Llama rotates
every layer, so those layers are approximate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kept.convert.families.base import LLAMA_CORE, Arch, hf_config, llama_family, llama_like

_BIASES = ("q.b", "k.b", "v.b", "o.b", "gate.b", "up.b", "down.b")


def helium(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "helium", rotary_style="interleaved", o_bias=False)


def ernie(cfg: dict[str, Any], path: Path) -> Arch:
    bias = bool(hf_config(cfg, path).use_bias)
    return llama_like(cfg, path, "ernie4_5", rotary_style="interleaved", qkv_bias=bias, o_bias=bias, mlp_bias=bias)


def seed_oss(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "seed_oss", o_bias=bool(hf_config(cfg, path).attention_out_bias))


def arcee(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "arcee", gated_mlp=False)


def smollm3(cfg: dict[str, Any], path: Path) -> Arch:
    arch = llama_like(cfg, path, "smollm3")
    nope = [i for i, rope in enumerate(hf_config(cfg, path).no_rope_layers) if not rope]
    if nope:
        arch = replace(arch, nope_layers=tuple(nope), divergent=arch.divergent + (
            ("rope", f"{len(nope)} of {arch.num_layers} layers apply no RoPE in the source (NoPE); Llama rotates "
                     "every layer"),))
    return arch


HELIUM = llama_family("helium", helium, *LLAMA_CORE, *_BIASES, hf_class="HeliumForCausalLM")
ERNIE = llama_family("ernie4_5", ernie, *LLAMA_CORE, *_BIASES, hf_class="Ernie4_5ForCausalLM")
SEED_OSS = llama_family("seed_oss", seed_oss, *LLAMA_CORE, *_BIASES, hf_class="SeedOssForCausalLM")
ARCEE = llama_family("arcee", arcee, "embed", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b", "down.w",
                     "down.b", "ln1.w", "ln2.w", "final.w", "head.w",
                     extra={"fc1.w": "model.layers.{i}.mlp.up_proj.weight", "fc1.b": "model.layers.{i}.mlp.up_proj.bias"},
                     hf_class="ArceeForCausalLM")
SMOLLM3 = llama_family("smollm3", smollm3, *LLAMA_CORE, *_BIASES, hf_class="SmolLM3ForCausalLM")
