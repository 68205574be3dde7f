"""The Orion -> Llama parameter mapping, as data.

Every Orion tensor is listed in :data:`SOURCE_MAP` (templated on the layer index ``{i}``) with the Llama tensor it
becomes and the rule that makes it, or ``None`` when it is dropped, with the reason in :data:`DROP_REASONS`.
The ``exact`` mapping adds the biases of :data:`FOLDED_BIASES`. :func:`plan_conversion` resolves the table for
one checkpoint and one norm mapping, and accounts for every tensor: a source tensor that matches no entry, an
Orion tensor that is missing, or a Llama tensor that nothing writes is a :class:`MappingError` naming it.

Rules (what each target tensor is computed from; arithmetic in :mod:`kept.convert`, float64 for float32 outputs
and float32 for bfloat16/float16 outputs, see ``kept.convert.arith_dtype``):

* ``copy``          NPM: identity.
* ``stream_in``     rows written into the residual stream (embedding rows). Identity, or with ``centered`` and
                    ``exact`` mean-centred: ``E <- E - E.mean(dim=1)``.
* ``stream_out``    a projection whose output is added to the residual stream (o_proj, down_proj, ``[out, in]``).
                    Identity, or with ``centered`` and ``exact`` ``W <- W - W.mean(dim=0)``. Every read of the
                    stream is a LayerNorm, which ignores the mean, so centring changes no teacher output and
                    makes the stream mean zero, where LayerNorm equals RMSNorm.
* ``gain``          OPM: RMSNorm weight ``g = gamma`` (``fit``: the Appendix-A least-squares ``g*`` estimated on
                    calibration text).
* ``fold``          ``exact`` only: bias ``b = W @ beta`` of a linear layer reading the output of a LayerNorm
                    with bias ``beta``.
* ``zeros``         ``exact`` only: the o_proj / down_proj biases that ``attention_bias`` / ``mlp_bias`` add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kept.errors import CheckpointError, MappingError

NORMS = ("paper", "centered", "exact", "fit")
CENTRED_NORMS = ("centered", "exact")

_ATTN = "model.layers.{i}.self_attn"
_MLP = "model.layers.{i}.mlp"
_LN1 = "model.layers.{i}.input_layernorm"
_LN2 = "model.layers.{i}.post_attention_layernorm"

# Orion source tensor -> (Llama target tensor, rule); None = dropped (reason in DROP_REASONS).
SOURCE_MAP: dict[str, tuple[str, str] | None] = {
    "model.embed_tokens.weight": ("model.embed_tokens.weight", "stream_in"),
    f"{_ATTN}.q_proj.weight": (f"{_ATTN}.q_proj.weight", "copy"),
    f"{_ATTN}.k_proj.weight": (f"{_ATTN}.k_proj.weight", "copy"),  # HF layout already; no RoPE permutation
    f"{_ATTN}.v_proj.weight": (f"{_ATTN}.v_proj.weight", "copy"),
    f"{_ATTN}.o_proj.weight": (f"{_ATTN}.o_proj.weight", "stream_out"),
    f"{_MLP}.gate_proj.weight": (f"{_MLP}.gate_proj.weight", "copy"),
    f"{_MLP}.up_proj.weight": (f"{_MLP}.up_proj.weight", "copy"),
    f"{_MLP}.down_proj.weight": (f"{_MLP}.down_proj.weight", "stream_out"),
    f"{_LN1}.weight": (f"{_LN1}.weight", "gain"),
    f"{_LN2}.weight": (f"{_LN2}.weight", "gain"),
    "model.norm.weight": ("model.norm.weight", "gain"),
    "lm_head.weight": ("lm_head.weight", "copy"),
    # LayerNorm biases have no place in RMSNorm.
    f"{_LN1}.bias": None,
    f"{_LN2}.bias": None,
    "model.norm.bias": None,
    # Non-persistent RoPE buffers some checkpoints carry.
    f"{_ATTN}.rotary_emb.inv_freq": None,
    "model.rotary_emb.inv_freq": None,
}

DROP_REASONS: dict[str, str] = {
    f"{_LN1}.bias": "LayerNorm beta has no place in RMSNorm (exact: folded into q/k/v biases instead)",
    f"{_LN2}.bias": "LayerNorm beta has no place in RMSNorm (exact: folded into gate/up biases instead)",
    "model.norm.bias": (
        "final LayerNorm beta has no place in stock Llama; its per-vocab logit offset lm_head @ beta_f is "
        "the one residual error of the exact mapping and is reported"
    ),
    f"{_ATTN}.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
    "model.rotary_emb.inv_freq": "RoPE buffer, recomputed from rope_theta",
}

# exact only: Llama bias -> (weight, beta) it is folded from; None = zero bias that the Llama flag also adds.
FOLDED_BIASES: dict[str, tuple[str, str] | None] = {
    f"{_ATTN}.q_proj.bias": (f"{_ATTN}.q_proj.weight", f"{_LN1}.bias"),
    f"{_ATTN}.k_proj.bias": (f"{_ATTN}.k_proj.weight", f"{_LN1}.bias"),
    f"{_ATTN}.v_proj.bias": (f"{_ATTN}.v_proj.weight", f"{_LN1}.bias"),
    f"{_ATTN}.o_proj.bias": None,  # attention_bias=True adds it; the stream stays centred with 0
    f"{_MLP}.gate_proj.bias": (f"{_MLP}.gate_proj.weight", f"{_LN2}.bias"),
    f"{_MLP}.up_proj.bias": (f"{_MLP}.up_proj.weight", f"{_LN2}.bias"),
    f"{_MLP}.down_proj.bias": None,  # mlp_bias=True adds it
}


def effective_rule(rule: str, norm: str) -> str:
    """The concrete operation of a table rule under a norm mapping."""
    if rule == "stream_in":
        return "center_rows" if norm in CENTRED_NORMS else "copy"
    if rule == "stream_out":
        return "center_out" if norm in CENTRED_NORMS else "copy"
    if rule == "gain":
        return "fit_gain" if norm == "fit" else "gain"
    return rule


@dataclass(frozen=True)
class Step:
    """One target tensor: its name, the operation, the source tensors it reads, its shape."""

    target: str
    op: str  # copy | center_rows | center_out | gain | fit_gain | fold | zeros
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    template: str  # the templated table entry it came from (target side)


@dataclass
class Plan:
    """A resolved mapping: target steps in Llama order, dropped source tensors, and the Llama config."""

    norm: str
    steps: list[Step]
    dropped: list[tuple[str, str]]  # (source tensor, reason)
    llama_config: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)  # templated rows for the fidelity report
    dropped_table: list[dict[str, Any]] = field(default_factory=list)


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>0|[1-9][0-9]*)") + "$")


_SOURCE_PATTERNS = [(t, _template_regex(t)) for t in SOURCE_MAP]


def match_source(name: str) -> tuple[str, int | None] | None:
    """The table template a source tensor name instantiates, and its layer index."""
    for template, rx in _SOURCE_PATTERNS:
        m = rx.match(name)
        if m:
            return template, (int(m.group("i")) if "i" in m.groupdict() else None)
    return None


def llama_config(orion_cfg: dict[str, Any], *, norm: str, dtype: str) -> dict[str, Any]:
    """config.json of the stock ``LlamaForCausalLM`` that holds the converted weights.

    Dimensions, context length, eps, rope_theta and the special ids are carried over; ``exact`` switches on
    ``attention_bias`` and ``mlp_bias``. The keys are those ``LlamaConfig.to_dict()`` writes (checked in the
    tests), built here without importing transformers' model code, which would cost the converter ~130 MB of
    resident memory. ``rope_theta``/``rope_scaling`` are written at top level too, so transformers 4.x (which
    leaderboard stacks still run) reads the same RoPE as transformers 5.
    """
    from importlib.metadata import version

    if norm not in NORMS:
        raise MappingError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    if orion_cfg.get("rope_scaling") not in (None, {}):
        raise CheckpointError(f"config.json: rope_scaling {orion_cfg['rope_scaling']!r} is not supported")
    heads = orion_cfg["num_attention_heads"]
    theta = float(orion_cfg.get("rope_theta", 10000.0))
    bias = norm == "exact"
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": bias,
        "attention_dropout": 0.0,
        "bos_token_id": orion_cfg.get("bos_token_id", 1),
        "dtype": dtype,
        "eos_token_id": orion_cfg.get("eos_token_id", 2),
        "head_dim": orion_cfg["hidden_size"] // heads,
        "hidden_act": "silu",
        "hidden_size": orion_cfg["hidden_size"],
        "initializer_range": orion_cfg.get("initializer_range", 0.02),
        "intermediate_size": orion_cfg["intermediate_size"],
        "max_position_embeddings": orion_cfg["max_position_embeddings"],
        "mlp_bias": bias,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": orion_cfg["num_hidden_layers"],
        "num_key_value_heads": orion_cfg.get("num_key_value_heads", heads),
        "pad_token_id": orion_cfg.get("pad_token_id", 0),
        "pretraining_tp": 1,
        "rms_norm_eps": float(orion_cfg.get("rms_norm_eps", 1e-5)),  # Orion's LayerNorm eps, same key
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "tie_word_embeddings": False,
        "transformers_version": version("transformers"),
        "use_cache": True,
        "vocab_size": orion_cfg["vocab_size"],
        # for transformers 4.x readers
        "rope_theta": theta,
        "rope_scaling": None,
        "torch_dtype": dtype,
    }


LEGACY_KEYS = ("rope_theta", "rope_scaling", "torch_dtype")


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a transformers model config, built on the meta device (no memory). Used by
    the tests to check :func:`orion_shapes` and :func:`llama_shapes` against transformers itself."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _decoder_shapes(cfg: dict[str, Any], *, norm_bias: bool, linear_bias: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the Llama-layout decoder, in transformers' state_dict order."""
    v, d, inter = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * (d // heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        for name, out, inp in (("self_attn.q_proj", d, d), ("self_attn.k_proj", kv, d), ("self_attn.v_proj", kv, d),
                               ("self_attn.o_proj", d, d), ("mlp.gate_proj", inter, d), ("mlp.up_proj", inter, d),
                               ("mlp.down_proj", d, inter)):
            shapes[f"{p}.{name}.weight"] = (out, inp)
            if linear_bias:
                shapes[f"{p}.{name}.bias"] = (out,)
        for name in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"{p}.{name}.weight"] = (d,)
            if norm_bias:
                shapes[f"{p}.{name}.bias"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if norm_bias:
        shapes["model.norm.bias"] = (d,)
    shapes["lm_head.weight"] = (v, d)
    return shapes


def orion_shapes(orion_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes an Orion checkpoint of this config must hold (LayerNorms with bias)."""
    return _decoder_shapes(orion_cfg, norm_bias=True, linear_bias=False)


def llama_shapes(llama_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the stock Llama model of this config.json, in its state_dict order."""
    bias = bool(llama_cfg.get("attention_bias"))
    if bias != bool(llama_cfg.get("mlp_bias")):
        raise MappingError("attention_bias and mlp_bias must agree for the Orion->Llama mapping")
    return _decoder_shapes(llama_cfg, norm_bias=False, linear_bias=bias)


def plan_conversion(
    *, orion_cfg: dict[str, Any], source_shapes: dict[str, tuple[int, ...]], norm: str, dtype: str
) -> Plan:
    """Resolve the mapping table for one checkpoint, accounting for every source and target tensor.

    ``source_shapes`` maps every tensor the checkpoint holds to its shape. Raises :class:`MappingError` for a
    tensor the table does not know or a target nothing writes, and :class:`CheckpointError` for a missing
    Orion tensor or one with the wrong shape.
    """
    if norm not in NORMS:
        raise MappingError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    n_layers = orion_cfg["num_hidden_layers"]
    want = orion_shapes(orion_cfg)

    used: dict[str, tuple[str, int | None]] = {}
    for name in source_shapes:
        hit = match_source(name)
        if hit is None or (hit[1] is not None and hit[1] >= n_layers):
            raise MappingError(f"source tensor {name!r} is neither mapped nor dropped by the Orion->Llama table")
        used[name] = hit
    head_dim = orion_cfg["hidden_size"] // orion_cfg["num_attention_heads"]
    for name, (template, _) in used.items():
        if template.endswith("inv_freq") and tuple(source_shapes[name]) != (head_dim // 2,):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(source_shapes[name])}, expected "
                                  f"({head_dim // 2},) (a RoPE buffer of head_dim {head_dim})")
    for name, shape in want.items():
        if name not in source_shapes:
            raise CheckpointError(f"checkpoint lacks tensor {name!r} that an Orion model of this config needs")
        if tuple(source_shapes[name]) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(source_shapes[name])}, expected {shape}")

    cfg = llama_config(orion_cfg, norm=norm, dtype=dtype)
    target_shapes = llama_shapes(cfg)
    steps: dict[str, Step] = {}
    dropped: list[tuple[str, str]] = []
    table: dict[tuple[str, str, str], int] = {}
    dropped_table: dict[tuple[str, str], int] = {}

    def add(step: Step) -> None:
        if step.target in steps:
            raise MappingError(f"target tensor {step.target!r} is written twice")
        steps[step.target] = step

    folded_betas = set()
    for name, (template, layer) in used.items():
        entry = SOURCE_MAP[template]
        if entry is None:
            if norm == "exact" and template in (f"{_LN1}.bias", f"{_LN2}.bias"):
                folded_betas.add(name)  # consumed by the fold steps below
                continue
            if name not in want and not name.endswith("inv_freq"):
                raise MappingError(f"source tensor {name!r} is not part of an Orion model of this config")
            dropped.append((name, DROP_REASONS[template]))
            dropped_table[(template, DROP_REASONS[template])] = dropped_table.get((template, DROP_REASONS[template]), 0) + 1
            continue
        target_t, rule = entry
        target = target_t.format(i=layer)
        op = effective_rule(rule, norm)
        add(Step(target, op, (name,), tuple(source_shapes[name]), target_t))
        table[(template, target_t, op)] = table.get((template, target_t, op), 0) + 1

    if norm == "exact":
        for i in range(n_layers):
            for target_t, src in FOLDED_BIASES.items():
                target = target_t.format(i=i)
                if target not in target_shapes:
                    raise MappingError(f"target tensor {target!r} does not exist in the Llama model")
                if src is None:
                    add(Step(target, "zeros", (), target_shapes[target], target_t))
                    key = ("(none)", target_t, "zeros")
                else:
                    w, beta = (s.format(i=i) for s in src)
                    add(Step(target, "fold", (w, beta), (source_shapes[w][0],), target_t))
                    key = (f"{src[0]} @ {src[1]}", target_t, "fold")
                table[key] = table.get(key, 0) + 1
        unused = sorted(
            n for n, (t, _) in used.items() if t in (f"{_LN1}.bias", f"{_LN2}.bias") and n not in folded_betas
        )
        if unused:
            raise MappingError(f"source tensor {unused[0]!r} was neither folded nor dropped")

    missing = [t for t in target_shapes if t not in steps]
    if missing:
        raise MappingError(f"target tensor {missing[0]!r} is never written ({len(missing)} missing)")
    extra = [t for t in steps if t not in target_shapes]
    if extra:
        raise MappingError(f"mapping writes {extra[0]!r}, which a stock LlamaForCausalLM does not have")
    for t, step in steps.items():
        if step.shape != target_shapes[t]:
            raise MappingError(f"target tensor {t!r} would have shape {step.shape}, Llama expects {target_shapes[t]}")

    ordered = [steps[t] for t in target_shapes]  # Llama's own order: embed, layers, norm, lm_head
    return Plan(
        norm=norm,
        steps=ordered,
        dropped=sorted(dropped),
        llama_config=cfg,
        table=[
            {"source": s, "target": t, "rule": op, "count": n} for (s, t, op), n in table.items()
        ],
        dropped_table=[{"source": s, "reason": r, "count": n} for (s, r), n in dropped_table.items()],
    )
