"""What a source family is, as data: :class:`Arch` (its computation, read from config.json) and :class:`Family`
(where each logical tensor lives on disk, what else it may carry, and which transformers classes run it).

The planner (:mod:`kept.convert.plan`) speaks only the logical vocabulary below; a family module maps it to the
tensor names of its checkpoints. Logical tensors (``{i}``: layer index):

* ``embed``; ``final.w`` / ``final.b`` (the final LayerNorm's gamma / beta); ``head.w`` / ``head.b`` (LM head)
* ``ln1.w`` / ``ln1.b`` (the norm before attention), ``ln2.w`` / ``ln2.b`` (before the MLP; absent when one norm
  feeds both, :attr:`Arch.shared_norm`)
* ``q.w k.w v.w`` (+ ``.b``), or ``qkv.w`` (+ ``.b``) for a fused per-head interleaved projection; ``o.w`` / ``o.b``
* ``gate.w up.w`` (+ ``.b``) for a gated MLP, ``fc1.w`` (+ ``.b``) for a non-gated one; ``down.w`` / ``down.b``
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kept.errors import CheckpointError


@dataclass(frozen=True)
class Arch:
    """One source checkpoint's computation, normalised across families."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int  # channels of each head that RoPE rotates, as pairs (i, i + rotary_dim/2)
    rope_theta: float
    max_position_embeddings: int
    norm_eps: float
    norm_weight: bool  # the LayerNorms have gamma
    norm_bias: bool  # ... and beta
    shared_norm: bool = False  # one LayerNorm feeds attention and MLP (Phi; parallel StableLM)
    parallel_residual: bool = False  # x + attn(n1 x) + mlp(n2 x)
    gated_mlp: bool = True  # down(act(gate z) * up z); else fc2(act(fc1 z))
    hidden_act: str = "silu"
    fused_qkv: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    head_bias: bool = False
    tied: bool = False  # lm_head is the embedding
    qk_layernorm: bool = False
    clip_qkv: float | None = None
    torch_dtype: str | None = None
    special_ids: dict[str, Any] = field(default_factory=dict)  # bos/eos/pad token ids as config.json has them


@dataclass(frozen=True)
class Runtime:
    """The transformers classes that compute the source, for the layer-streaming fidelity pass and the fit."""

    module: str  # transformers.models.<module>.modeling_<module>
    layer_class: str
    rotary_class: str
    layer_prefix: str  # "model.layers.{i}."
    norm_sites: dict[str, tuple[str, ...]]  # the layer's LayerNorm module -> Llama norm sites it becomes


@dataclass(frozen=True)
class Family:
    """A source family: its config reader, where each logical tensor is stored, what else a checkpoint may carry
    (dropped, each with its reason), and its runtime."""

    name: str
    model_types: tuple[str, ...]
    read_arch: Callable[[dict[str, Any], Path], Arch]
    tensors: dict[str, tuple[str, ...]]  # logical name -> source name template(s), first = canonical
    dropped: dict[str, str]  # source template -> why it has no place in stock Llama
    runtime: Runtime
    teacher_config: Callable[[dict[str, Any], Path], Any]  # config.json -> the transformers config of the runtime
    tokenizer: str  # "sentencepiece" (tokenizer.model) | "tokenizers" (tokenizer.json)
    hf_class: str  # transformers' own class of the family (the reference the tests compare against)


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing config.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return cfg


def positive(cfg: dict[str, Any], path: Path, *keys: str) -> None:
    """Each key must be a positive integer."""
    for key in keys:
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] <= 0:
            raise CheckpointError(f"{path}: key {key!r} must be a positive integer, found {cfg.get(key)!r}")


def rope_setting(cfg: dict[str, Any], *keys: str, default: float) -> float:
    """A RoPE setting from ``rope_parameters`` (transformers 5) or the first of ``keys`` at top level."""
    params = cfg.get("rope_parameters") or {}
    for key in keys:
        if key in params and params[key] is not None:
            return float(params[key])
    for key in keys:
        if cfg.get(key) is not None:
            return float(cfg[key])
    return default


def rotary_dim(head_dim: int, factor: float, path: Path) -> int:
    """Rotated channels per head (``int(head_dim * factor)`` as transformers computes it); even and >= 2."""
    r = int(head_dim * factor)
    if r < 2 or r % 2 or r > head_dim:
        raise CheckpointError(f"{path}: partial rotary factor {factor} of head_dim {head_dim} gives {r} rotated "
                              "channels; stock Llama needs an even number between 2 and head_dim")
    return r


def no_rope_scaling(cfg: dict[str, Any], path: Path) -> None:
    """RoPE scaling of the source (linear, dynamic, ...) is not carried over: refuse it by name."""
    scaling = cfg.get("rope_scaling")
    params = cfg.get("rope_parameters") or {}
    kind = params.get("rope_type", "default")
    if scaling not in (None, {}) or kind not in ("default", None):
        raise CheckpointError(f"{path}: rope_scaling {scaling or params!r} is not supported (only plain RoPE)")


def special_ids(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def hf_config(cfg: dict[str, Any], path: Path) -> Any:
    """transformers' own config class of ``model_type``, built from config.json as ``from_pretrained`` would."""
    from transformers import AutoConfig

    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version")}
    try:
        return AutoConfig.for_model(cfg["model_type"], **keep)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: transformers cannot build a {cfg['model_type']} config ({exc})") from exc


def check_dims(cfg: dict[str, Any], path: Path) -> tuple[int, int]:
    """The checks every HF-layout family shares (positive sizes, plain RoPE, heads dividing the width); returns
    (heads, head_dim)."""
    positive(cfg, path, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings")
    no_rope_scaling(cfg, path)
    heads = cfg["num_attention_heads"]
    if cfg["hidden_size"] % heads:
        raise CheckpointError(f"{path}: hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {heads}")
    return heads, cfg["hidden_size"] // heads


_L = "model.layers.{i}"
# Llama's own tensor names (Orion, OLMo and StableLM store these), plus the LayerNorm gammas/betas some add.
LLAMA_LAYOUT: dict[str, tuple[str, ...]] = {
    "embed": ("model.embed_tokens.weight",),
    **{f"{p}.{kind}": (f"{_L}.self_attn.{p}_proj.{'weight' if kind == 'w' else 'bias'}",)
       for p in ("q", "k", "v", "o") for kind in ("w", "b")},
    **{f"{p}.w": (f"{_L}.mlp.{p}_proj.weight",) for p in ("gate", "up", "down")},
    **{f"{n}.{kind}": (f"{_L}.{site}.{'weight' if kind == 'w' else 'bias'}",)
       for n, site in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")) for kind in ("w", "b")},
    "final.w": ("model.norm.weight",),
    "final.b": ("model.norm.bias",),
    "head.w": ("lm_head.weight",),
}
ROPE_BUFFERS = {
    f"{_L}.self_attn.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    "model.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
}
SEQUENTIAL_NORMS = {"input_layernorm": ("input_layernorm",), "post_attention_layernorm": ("post_attention_layernorm",)}


def layout(*logical: str) -> dict[str, tuple[str, ...]]:
    """The Llama-named entries of :data:`LLAMA_LAYOUT` for these logical tensors."""
    return {k: LLAMA_LAYOUT[k] for k in logical}
