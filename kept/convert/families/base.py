"""What a source family is, as data: :class:`Arch` (its computation, read from config.json) and :class:`Family`
(where each logical tensor lives on disk, what else it may carry, and which classes run it).

The planner (:mod:`kept.convert.plan`) speaks only the logical vocabulary below; a family module maps it to the
tensor names of its checkpoints. Logical tensors (``{i}``: layer index):

* ``embed``; ``final.w`` / ``final.b`` (the final norm's gain / LayerNorm beta); ``head.w`` / ``head.b`` (LM head)
* ``ln1.w`` / ``ln1.b`` (the norm before attention), ``ln2.w`` / ``ln2.b`` (before the MLP; absent when one norm
  feeds both, :attr:`Arch.shared_norm`)
* ``q.w k.w v.w`` (+ ``.b``), or ``qkv.w`` (+ ``.b``) for a fused projection laid out as :attr:`Arch.qkv_layout`
  says; ``o.w`` / ``o.b``
* ``gate.w up.w`` (+ ``.b``) for a gated MLP (``gate_up.w``: both fused as ``[gate | up]``), ``fc1.w`` (+ ``.b``)
  for a non-gated one; ``down.w`` / ``down.b``
* norms stock Llama cannot hold, replaced by fitted diagonal scales folded into the projection they follow
  (:attr:`Arch.folds`): ``qn.w`` / ``kn.w`` (+ ``.b``: q/k norms), ``pn1.w`` / ``pn2.w`` (norms on the attention and
  MLP outputs: sandwich / peri-layer / post-norm blocks)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kept.errors import CheckpointError

# Llama's rope types that reproduce the source's when copied (transformers' ROPE_INIT_FUNCTIONS, LlamaConfig)
LLAMA_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
FOLD_SITES = ("q", "k", "o", "down")  # where a fitted diagonal (a norm Llama cannot hold) is folded


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
    rotary_dim: int  # channels of each head that RoPE rotates (pairs: see rotary_style)
    rope_theta: float
    max_position_embeddings: int
    norm_eps: float
    norm_weight: bool  # the norms have a gain
    norm_bias: bool  # ... and a LayerNorm beta
    shared_norm: bool = False  # one norm feeds attention and MLP (Phi; parallel StableLM; Falcon-7B; GPT-J; Cohere)
    parallel_residual: bool = False  # x + attn(n1 x) + mlp(n2 x)
    gated_mlp: bool = True  # down(act(gate z) * up z); else fc2(act(fc1 z))
    hidden_act: str = "silu"
    qkv_layout: str = "separate"  # separate | heads ([head: q,k,v]) | blocks ([q | k | v]) | groups ([kv: q*g,k,v])
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    head_bias: bool = False
    tied: bool = False  # lm_head is the embedding
    qk_layernorm: bool = False  # per-head q/k LayerNorm that is dropped (StableLM, Phi, Persimmon)
    clip_qkv: float | None = None
    torch_dtype: str | None = None
    special_ids: dict[str, Any] = field(default_factory=dict)  # bos/eos/pad token ids as config.json has them
    # --- the zoo: computations stock Llama holds exactly once folded ---
    norm_kind: str = "layer"  # "layer" (LayerNorm: centring applies) | "rms" (RMSNorm: gains copied)
    norm_offset: float = 0.0  # the stored gain is weight + offset (Gemma's (1 + w), Nemotron's LayerNorm1P)
    fused_gate_up: bool = False  # gate_up_proj rows [gate | up] (Phi-3, GLM)
    rotary_style: str = "half"  # half: pairs (i, i + r/2) (rotate_half); interleaved: pairs (2i, 2i + 1)
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # rope_parameters beyond theta ({}: plain RoPE)
    embed_scale: float = 1.0  # the embedding output is multiplied by this (Gemma's sqrt(d), Granite's multiplier)
    residual_scale: float = 1.0  # each block's attention and MLP outputs are multiplied by this (Granite)
    attn_scale: float | None = None  # q.k scale, if not head_dim ** -0.5 (Granite, Gemma 2/3)
    logit_scale: float = 1.0  # logits are multiplied by this (Granite: 1 / logits_scaling; Cohere)
    head_norm: bool = False  # LM-head rows L2-normalised before use (Baichuan2's NormHead)
    # --- approximate: what stock Llama cannot hold ---
    folds: tuple[str, ...] = ()  # FOLD_SITES whose norm is replaced by a fitted diagonal scale
    qk_norm_span: str = "head"  # q/k norms over each head ("head": weight [head_dim]) or all heads ("full": OLMo-2)
    qk_norm_after_rope: bool = False  # the q/k norms act on the rotated q/k (Hunyuan): fitted scales pair-averaged
    pre_norm: bool = True  # False: attention / MLP read the raw stream (OLMo-2 post-norm); Llama's gains are fitted
    nope_layers: tuple[int, ...] = ()  # layers the source runs without RoPE (SmolLM3; EXAONE 4 and Cohere 2 hybrids)
    divergent: tuple[tuple[str, str], ...] = ()  # (module, change) the family detected in config.json


@dataclass(frozen=True)
class Runtime:
    """The classes that compute the source (transformers' own, or a plain-PyTorch port of a remote-code family's
    published modeling code), for the layer-streaming fidelity pass and the calibration fits."""

    layer_prefix: str  # the runtime's parameter prefix of layer {i}: "model.layers.{i}."
    final_norm: str  # the runtime's module path of the final norm: "model.norm"
    norm_sites: dict[str, tuple[str, ...]] = field(default_factory=dict)  # LayerNorm module -> Llama norm sites
    renames: tuple[tuple[str, str], ...] = ()  # (regex on a source name, replacement): the runtime's names
    model_class: str | None = None  # "module:Class" when transformers has no class for the family
    fold_modules: dict[str, str] = field(default_factory=dict)  # fold site -> norm module in the layer
    pre_inputs: dict[str, str] = field(default_factory=lambda: {"ln1": "self_attn", "ln2": "mlp"})  # pre_norm False


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
    teacher_config: Callable[[dict[str, Any], Path], Any]  # config.json -> the config of the runtime
    tokenizer: str  # "sentencepiece" (tokenizer.model) | "tokenizers" (tokenizer.json)
    hf_class: str  # the reference class of the family (transformers' own, or kept's port of remote code)
    architectures: tuple[str, ...] = ()  # config.json "architectures" that name the family without a model_type


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


def rope_scaling(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The source's RoPE scaling as Llama's rope parameters (without theta), from ``rope_parameters`` (transformers
    5) or a legacy ``rope_scaling``; {} for plain RoPE. Kinds Llama does not compute are refused by name."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling") or {}
    if legacy and params.get("rope_type", "default") in ("default", None):
        params.update(legacy)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in LLAMA_ROPE_TYPES:
        raise CheckpointError(f"{path}: rope_type {kind!r} is not one stock Llama computes "
                              f"({', '.join(LLAMA_ROPE_TYPES)})")
    if kind == "default":
        return {}
    out = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    out["rope_type"] = kind
    if kind in ("llama3", "yarn", "longrope"):
        out.setdefault("original_max_position_embeddings",
                       cfg.get("original_max_position_embeddings") or cfg.get("max_position_embeddings"))
    return out


def no_rope_scaling(cfg: dict[str, Any], path: Path) -> None:
    """Orion: RoPE scaling is not part of its published configs; refuse it by name."""
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

    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version")
            and not k.startswith("_")}
    try:
        return AutoConfig.for_model(cfg["model_type"], **keep)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: transformers cannot build a {cfg['model_type']} config "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def check_dims(cfg: dict[str, Any], path: Path) -> tuple[int, int]:
    """The checks every HF-layout family shares (positive sizes, heads dividing the width); returns (heads,
    head_dim). RoPE scaling is read by :func:`rope_scaling`."""
    positive(cfg, path, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings")
    heads = cfg["num_attention_heads"]
    if cfg["hidden_size"] % heads:
        raise CheckpointError(f"{path}: hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {heads}")
    return heads, cfg["hidden_size"] // heads


def llama_like(cfg: dict[str, Any], path: Path, family: str, **kw: Any) -> Arch:
    """The :class:`Arch` of a Llama-shaped RMSNorm decoder from its config.json, read through transformers' own
    config class of the family (its defaults and legacy keys as ``from_pretrained`` applies them); ``kw`` sets what
    the family does differently (biases, scales, norm offsets, ...)."""
    c = hf_config(cfg, path)
    inter = kw.get("intermediate_size", getattr(c, "intermediate_size", None))
    pos = {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": inter,
           "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
           "max_position_embeddings": c.max_position_embeddings}
    positive(pos, path, *pos)
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    rope = hf_rope(c)
    partial = rope.get("partial_rotary_factor") or getattr(c, "partial_rotary_factor", None) or 1.0
    raw_rope = {**cfg, "rope_parameters": rope}
    args: dict[str, Any] = dict(
        family=family, vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=inter,
        num_layers=c.num_hidden_layers, num_heads=heads, num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=head_dim, rotary_dim=rotary_dim(head_dim, float(partial), path),
        rope_theta=float(rope.get("rope_theta") or 10000.0), rope_scaling=rope_scaling(raw_rope, path),
        max_position_embeddings=c.max_position_embeddings,
        norm_eps=float(next(getattr(c, k) for k in ("rms_norm_eps", "layer_norm_eps", "norm_eps", "layer_norm_epsilon", "norm_epsilon")
                            if getattr(c, k, None) is not None)),
        norm_weight=True, norm_bias=False, norm_kind="rms", hidden_act=getattr(c, "hidden_act", "silu"),
        qkv_bias=bool(getattr(c, "attention_bias", False)), o_bias=bool(getattr(c, "attention_bias", False)),
        mlp_bias=bool(getattr(c, "mlp_bias", False)), tied=bool(getattr(c, "tie_word_embeddings", False)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"), special_ids=special_ids(cfg),
        divergent=window_divergence(c),
    )
    args.update(kw)
    return Arch(**args)


def hf_rope(c: Any) -> dict[str, Any]:
    """A transformers config's rope parameters: the full-attention layers' where they differ per layer type."""
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        rope = dict(rope["full_attention"])
    return rope


def window_divergence(c: Any) -> tuple[tuple[str, str], ...]:
    """A sliding window narrower than the context, on every layer or on those ``layer_types`` names: Llama attends
    to the whole past, so the two agree only within the window."""
    window = getattr(c, "sliding_window", None)
    if not window or window >= c.max_position_embeddings or getattr(c, "use_sliding_window", True) is False:
        return ()
    types = getattr(c, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return ()
    which = ("all layers" if types is None or all(t == "sliding_attention" for t in types) else
             f"{sum(t == 'sliding_attention' for t in types)} of {len(types)} layers")
    return (("attention", f"sliding window of {window} tokens ({which}) dropped: Llama attends to the whole past, so "
                          f"the two agree exactly only within {window} tokens"),)


_L = "model.layers.{i}"
# Llama's own tensor names (Orion, OLMo, StableLM and most of the zoo store these), plus norm betas some add.
LLAMA_LAYOUT: dict[str, tuple[str, ...]] = {
    "embed": ("model.embed_tokens.weight",),
    **{f"{p}.{kind}": (f"{_L}.self_attn.{p}_proj.{'weight' if kind == 'w' else 'bias'}",)
       for p in ("q", "k", "v", "o") for kind in ("w", "b")},
    **{f"{p}.{kind}": (f"{_L}.mlp.{p}_proj.{'weight' if kind == 'w' else 'bias'}",)
       for p in ("gate", "up", "down") for kind in ("w", "b")},
    **{f"{n}.{kind}": (f"{_L}.{site}.{'weight' if kind == 'w' else 'bias'}",)
       for n, site in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")) for kind in ("w", "b")},
    "qn.w": (f"{_L}.self_attn.q_norm.weight",),
    "kn.w": (f"{_L}.self_attn.k_norm.weight",),
    "final.w": ("model.norm.weight",),
    "final.b": ("model.norm.bias",),
    "head.w": ("lm_head.weight",),
}
LLAMA_CORE = ("embed", "q.w", "k.w", "v.w", "o.w", "gate.w", "up.w", "down.w", "ln1.w", "ln2.w", "final.w", "head.w")
ROPE_BUFFERS = {
    f"{_L}.self_attn.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    "model.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
}
SEQUENTIAL_NORMS = {"input_layernorm": ("input_layernorm",), "post_attention_layernorm": ("post_attention_layernorm",)}
LLAMA_RUNTIME = Runtime(layer_prefix=f"{_L}.", final_norm="model.norm")


def layout(*logical: str, extra: dict[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """The Llama-named entries of :data:`LLAMA_LAYOUT` for these logical tensors, plus ``extra`` ones (logical name
    -> the family's template)."""
    out = {k: LLAMA_LAYOUT[k] for k in logical}
    out.update({k: (v,) for k, v in (extra or {}).items()})
    return out


def llama_family(name: str, read_arch: Callable[[dict[str, Any], Path], Arch], *logical: str, hf_class: str,
                 extra: dict[str, str] | None = None, runtime: Runtime = LLAMA_RUNTIME,
                 dropped: dict[str, str] | None = None, **kw: Any) -> Family:
    """A family stored under Llama's tensor names (``logical`` of :data:`LLAMA_LAYOUT` plus ``extra``), run by
    transformers' own class of its ``model_type`` ``name``."""
    return Family(name=name, model_types=kw.pop("model_types", (name,)), read_arch=read_arch,
                  tensors=layout(*logical, extra=extra), dropped=ROPE_BUFFERS if dropped is None else dropped,
                  runtime=runtime, teacher_config=kw.pop("teacher_config", hf_config),
                  tokenizer=kw.pop("tokenizer", "tokenizers"), hf_class=hf_class, **kw)


def fold_runtime(*, prefix: str = "model.layers.{i}.", final_norm: str = "model.norm", **folds: str) -> Runtime:
    """A runtime whose norms at ``folds`` (fold site -> module path in the layer) are replaced by fitted scales."""
    return Runtime(layer_prefix=prefix, final_norm=final_norm, fold_modules=folds)
