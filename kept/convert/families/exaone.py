"""EXAONE 3.0 / 3.5 (``exaone``: transformers runs it as ``LlamaForCausalLM``) and EXAONE 4.0 (``Exaone4ForCausalLM``).

EXAONE 3.x is Llama under other tensor names (``transformer.h.{i}.attn.attention.*``, ``mlp.c_fc_0`` = gate,
``c_fc_1`` = up, ``c_proj`` = down, ``ln_1``/``ln_2``/``ln_f``) with llama3 RoPE scaling on the 32k models: renamed,
exact. EXAONE 4.0 is post-norm (no norm before attention or MLP, RMSNorms after them) with per-head q/k norms, and
its hybrid configs (sliding windows) apply no RoPE on the full-attention layers: Llama's input gains and the folded
scales are fitted on calibration text (approximate, measured), sliding windows exact only within the window."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Runtime, fold_runtime, hf_config, llama_family, llama_like

_H = "transformer.h.{i}"
RENAMES = (  # EXAONE 3.x's names -> the LlamaForCausalLM transformers runs it with (as its conversion mapping)
    (r"^transformer\.wte\.", "model.embed_tokens."), (r"^transformer\.h\.", "model.layers."),
    (r"^transformer\.ln_f\.", "model.norm."), (r"\.attn\.attention\.", ".self_attn."),
    (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."), (r"\.ln_1\.", ".input_layernorm."),
    (r"\.ln_2\.", ".post_attention_layernorm."), (r"\.mlp\.c_fc_0\.", ".mlp.gate_proj."),
    (r"\.mlp\.c_fc_1\.", ".mlp.up_proj."), (r"\.mlp\.c_proj\.", ".mlp.down_proj."),
)


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    return llama_like(cfg, path, "exaone")


def read_arch4(cfg: dict[str, Any], path: Path) -> Arch:
    arch = llama_like(cfg, path, "exaone4", pre_norm=False, folds=("q", "k", "o", "down"))
    types = getattr(hf_config(cfg, path), "layer_types", None) or []
    if "sliding_attention" in types and "full_attention" in types:
        nope = tuple(i for i, t in enumerate(types) if t == "full_attention")
        n = len(nope)
        arch = replace(arch, nope_layers=nope, divergent=arch.divergent + (
            ("rope", f"{n} full-attention layers apply no RoPE in the source; Llama rotates every layer"),))
    return arch


FAMILY = llama_family(
    "exaone", read_arch, hf_class="LlamaForCausalLM", architectures=("ExaoneForCausalLM",),
    extra={"embed": "transformer.wte.weight", **{f"{p}.w": f"{_H}.attn.attention.{p}_proj.weight" for p in "qkv"},
           "o.w": f"{_H}.attn.attention.out_proj.weight", "gate.w": f"{_H}.mlp.c_fc_0.weight",
           "up.w": f"{_H}.mlp.c_fc_1.weight", "down.w": f"{_H}.mlp.c_proj.weight", "ln1.w": f"{_H}.ln_1.weight",
           "ln2.w": f"{_H}.ln_2.weight", "final.w": "transformer.ln_f.weight", "head.w": "lm_head.weight"},
    dropped={f"{_H}.attn.attention.rotary.inv_freq": "RoPE buffer, recomputed from rope_theta"},
    runtime=Runtime(layer_prefix="model.layers.{i}.", final_norm="model.norm", renames=RENAMES),
)
_L = "model.layers.{i}"
EXAONE4 = llama_family(
    "exaone4", read_arch4, "embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "qn.w", "kn.w",
    "final.w", "head.w",
    extra={"pn1.w": f"{_L}.post_attention_layernorm.weight", "pn2.w": f"{_L}.post_feedforward_layernorm.weight"},
    hf_class="Exaone4ForCausalLM",
    runtime=fold_runtime(q="self_attn.q_norm", k="self_attn.k_norm", o="post_attention_layernorm",
                         down="post_feedforward_layernorm"),
)
