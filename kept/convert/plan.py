"""The generic planner: one source family's checkpoint + a norm mapping -> the steps that write a stock Llama.

A family (:mod:`kept.convert.families`) says where each logical tensor lives; this module says what every Llama
tensor is computed from, for every family alike, and accounts for every tensor: a source tensor that is neither
used nor dropped with a reason, a missing or misshapen source tensor, or a Llama tensor nothing writes is an
error naming it. The algebra of each rule is in docs/architecture.md; the arithmetic in :mod:`kept.convert.ops`.

Operations of a :class:`Step` (``rows``: a row selection of the source, e.g. one of q/k/v from a fused QKV, or
the partial-rotary permutation; ``scale``: a factor on the result):

* ``copy``         NPM: identity (rows / scale as given).
* ``center_rows``  rows written into the residual stream (embedding): ``E - E.mean(dim=1)``.
* ``center_out``   a projection added to the stream (``[out, in]``): ``W - W.mean(dim=0)``.
* ``center_vec``   a bias added to the stream: ``b - b.mean()``.
* ``gain``         RMSNorm weight ``g = gamma``; ``ones``: ``g = 1`` (weightless LayerNorm); ``fit_gain``: the
                   Appendix-A least-squares gains.
* ``fold``         ``b = W[rows] @ beta (+ b_src[rows])``: a LayerNorm's beta folded into the next linear layer.
* ``zeros`` / ``fill``  constant tensors (a zero bias the Llama flag adds; the constant-1 ``up`` of a non-gated MLP).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from kept.convert.families.base import Arch, Family
from kept.errors import CheckpointError, MappingError

NORMS = ("paper", "centered", "exact", "fit")
CENTRED_NORMS = ("centered", "exact")
MLP_TARGETS = ("runtimes", "transformers")
GELU_SIGMOID = 1.702  # GELU(x) ~ x * sigmoid(1.702 x) = silu(1.702 x) / 1.702
FROZEN_FACTOR = 1e9  # llama3 RoPE factor that freezes the channels a partial-rotary source leaves unrotated
LEGACY_KEYS = ("rope_theta", "rope_scaling", "torch_dtype", "original_max_position_embeddings")

EXACT, OFFSET, APPROX = "exact", "exact up to a logit offset", "approximate"

# Source tensors some mappings read and others do not: why they are dropped when unread.
UNUSED_REASONS = {
    "ln1": "LayerNorm beta has no place in RMSNorm (exact: folded into the next linear layers' biases instead)",
    "ln2": "LayerNorm beta has no place in RMSNorm (exact: folded into the next linear layers' biases instead)",
    "final.b": ("final LayerNorm beta has no place in stock Llama; its per-vocab logit offset head @ beta_f is the "
                "one residual error of the exact mapping and is reported"),
    "head.b": "LM-head bias: stock Llama has none; it is part of the reported logit offset",
}

_ATTN = "model.layers.{i}.self_attn"
_MLP = "model.layers.{i}.mlp"


@dataclass(frozen=True)
class Step:
    """One target tensor: its name, the operation, the source tensors it reads, its shape."""

    target: str
    op: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    template: str  # the templated Llama name it instantiates
    rows: tuple[int, ...] | None = None
    scale: float = 1.0

    @property
    def verbatim(self) -> bool:
        """The target is the source's values unchanged (a cast at most)."""
        return self.op in ("copy", "gain") and self.rows is None and self.scale == 1.0


@dataclass
class Plan:
    """A resolved mapping: target steps in Llama order, dropped source tensors, the Llama config, and the
    exactness class of the conversion with what makes it so."""

    norm: str
    family: str
    steps: list[Step]
    dropped: list[tuple[str, str]]  # (source tensor, reason)
    llama_config: dict[str, Any]
    exactness: str = EXACT
    divergences: list[dict[str, str]] = field(default_factory=list)  # {module, change}
    offset: dict[str, str | None] = field(default_factory=dict)  # head / beta / bias source names of the offset
    table: list[dict[str, Any]] = field(default_factory=list)
    dropped_table: list[dict[str, Any]] = field(default_factory=list)


# ---- names and shapes ------------------------------------------------------------------------------------------


def _regex(template: str) -> re.Pattern[str]:
    rx = re.escape(template)
    for key in ("i", "h"):
        rx = rx.replace(re.escape("{" + key + "}"), rf"(?P<{key}>0|[1-9][0-9]*)")
    return re.compile("^" + rx + "$")


def logical_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """The logical tensors (``{i}``-templated) a checkpoint of this architecture holds, with their shapes."""
    d, inter, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_heads * hd, arch.num_kv_heads * hd
    s: dict[str, tuple[int, ...]] = {"embed": (arch.vocab_size, d)}
    norms = ("ln1",) if arch.shared_norm else ("ln1", "ln2")
    for n in norms:
        if arch.norm_weight:
            s[f"{n}.w"] = (d,)
        if arch.norm_bias:
            s[f"{n}.b"] = (d,)
    if arch.fused_qkv:
        s["qkv.w"] = (q + 2 * kv, d)
        if arch.qkv_bias:
            s["qkv.b"] = (q + 2 * kv,)
    else:
        for name, out in (("q", q), ("k", kv), ("v", kv)):
            s[f"{name}.w"] = (out, d)
            if arch.qkv_bias:
                s[f"{name}.b"] = (out,)
    s["o.w"] = (d, q)
    if arch.o_bias:
        s["o.b"] = (d,)
    for name in ("gate", "up") if arch.gated_mlp else ("fc1",):
        s[f"{name}.w"] = (inter, d)
        if arch.mlp_bias:
            s[f"{name}.b"] = (inter,)
    s["down.w"] = (d, inter)
    if arch.mlp_bias:
        s["down.b"] = (d,)
    if arch.norm_weight:
        s["final.w"] = (d,)
    if arch.norm_bias:
        s["final.b"] = (d,)
    if not arch.tied:
        s["head.w"] = (arch.vocab_size, d)
    if arch.head_bias:
        s["head.b"] = (arch.vocab_size,)
    return s


def source_shapes(family: Family, arch: Arch) -> dict[str, tuple[int, ...]]:
    """Tensor names (canonical spelling) and shapes a checkpoint of this family and config must hold."""
    out: dict[str, tuple[int, ...]] = {}
    for logical, shape in logical_shapes(arch).items():
        template = family.tensors[logical][0]
        for i in range(arch.num_layers) if "{i}" in template else [None]:
            out[template.format(i=i)] = shape
    return out


def _biases(arch: Arch, norm: str) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias) of the Llama target."""
    fold = norm == "exact" and arch.norm_bias
    return (fold or arch.qkv_bias or arch.o_bias, fold or arch.mlp_bias or not arch.gated_mlp)


def _rope(arch: Arch) -> dict[str, Any]:
    """Llama's rope parameters that reproduce the source's RoPE (partial rotary: see docs/architecture.md)."""
    d, r, theta = arch.head_dim, arch.rotary_dim, arch.rope_theta
    if r == d:
        return {"rope_theta": theta, "rope_type": "default"}
    # The permuted channels give Llama's pair j the frequency theta'^(-2j/d) = theta^(-2j/r): the source's for
    # j < r/2. Pairs j >= r/2 (the unrotated channels) have wavelengths >= 2*pi*theta; the llama3 schedule
    # divides every wavelength above its low-frequency boundary by FROZEN_FACTOR, freezing them. Both boundaries
    # sit strictly between the longest rotated wavelength and 2*pi*theta, so no frequency is smoothed.
    a, b = 2 * math.pi * theta ** ((r - 2) / r), 2 * math.pi * theta
    high, low = a ** (2 / 3) * b ** (1 / 3), a ** (1 / 3) * b ** (2 / 3)  # wavelength boundaries, high < low
    orig = max(1, arch.max_position_embeddings // 2)  # only the ratios orig / factor matter
    return {"rope_theta": theta ** (d / r), "rope_type": "llama3", "factor": FROZEN_FACTOR,
            "low_freq_factor": orig / low, "high_freq_factor": orig / high,
            "original_max_position_embeddings": orig}


def llama_config(arch: Arch, *, norm: str, dtype: str, mlp_target: str = "runtimes") -> dict[str, Any]:
    """config.json of the stock ``LlamaForCausalLM`` that holds the converted weights.

    The keys are those ``LlamaConfig.to_dict()`` writes (checked in the tests), built without importing
    transformers' model code (~130 MB of resident memory). RoPE is written at top level too (``rope_theta``,
    ``rope_scaling``, ``original_max_position_embeddings``), which transformers 4.x and llama.cpp's converter read.
    """
    from importlib.metadata import version

    attn_bias, mlp_bias = _biases(arch, norm)
    rope = _rope(arch)
    act = arch.hidden_act if arch.gated_mlp or mlp_target == "transformers" else "silu"
    ids = arch.special_ids
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": attn_bias,
        "attention_dropout": 0.0,
        "bos_token_id": ids.get("bos_token_id"),
        "dtype": dtype,
        "eos_token_id": ids.get("eos_token_id"),
        "head_dim": arch.head_dim,
        "hidden_act": act,
        "hidden_size": arch.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": arch.intermediate_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "mlp_bias": mlp_bias,
        "model_type": "llama",
        "num_attention_heads": arch.num_heads,
        "num_hidden_layers": arch.num_layers,
        "num_key_value_heads": arch.num_kv_heads,
        "pad_token_id": ids.get("pad_token_id"),
        "pretraining_tp": 1,
        "rms_norm_eps": arch.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": _tied_target(arch, norm),
        "transformers_version": version("transformers"),
        "use_cache": True,
        "vocab_size": arch.vocab_size,
        # for transformers 4.x readers and llama.cpp's converter
        "rope_theta": rope["rope_theta"],
        "rope_scaling": None if rope["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"},
        "torch_dtype": dtype,
    }
    if "original_max_position_embeddings" in rope:
        cfg["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    return cfg


def _tied_target(arch: Arch, norm: str) -> bool:
    """A tied source stays tied unless centring meets a final gain: then g * n is not orthogonal to the
    all-ones direction and the centred embedding would change the logits, so the head keeps the uncentred rows."""
    return arch.tied and not (norm in CENTRED_NORMS and arch.norm_weight)


def llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the stock Llama model of this config.json, in its state_dict order."""
    v, d, inter = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // heads
    q, kv = heads * hd, cfg.get("num_key_value_heads", heads) * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        for name, out, inp, bias in (
            ("self_attn.q_proj", q, d, cfg.get("attention_bias")), ("self_attn.k_proj", kv, d, cfg.get("attention_bias")),
            ("self_attn.v_proj", kv, d, cfg.get("attention_bias")), ("self_attn.o_proj", d, q, cfg.get("attention_bias")),
            ("mlp.gate_proj", inter, d, cfg.get("mlp_bias")), ("mlp.up_proj", inter, d, cfg.get("mlp_bias")),
            ("mlp.down_proj", d, inter, cfg.get("mlp_bias")),
        ):
            shapes[f"{p}.{name}.weight"] = (out, inp)
            if bias:
                shapes[f"{p}.{name}.bias"] = (out,)
        shapes[f"{p}.input_layernorm.weight"] = (d,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, d)
    return shapes


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a transformers model config, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def rotary_rows(arch: Arch) -> list[int]:
    """Per-head source channel of each Llama channel: source pair (i, i + r/2) lands on Llama pair (i, i + d/2),
    the unrotated channels fill the rest in order (identity for full rotary)."""
    d, r = arch.head_dim, arch.rotary_dim
    half, rest = r // 2, (d - r) // 2
    first = list(range(half)) + [r + j for j in range(rest)]
    second = [half + j for j in range(half)] + [r + rest + j for j in range(rest)]
    return first + second


# ---- the plan ----------------------------------------------------------------------------------------------------


def divergences(arch: Arch, *, norm: str, mlp_target: str) -> list[dict[str, str]]:
    """What stock Llama cannot compute of this source under this mapping (empty: exact, maybe up to an offset)."""
    out = []
    if norm == "paper":
        out.append({"module": "norm", "change": "RMSNorm with gamma copied, beta dropped, stream not centred "
                                                "(the report's OPM)" if arch.norm_weight else
                    "RMSNorm with g = 1 on a stream that is not centred (the report's OPM)"})
    elif norm == "fit":
        out.append({"module": "norm", "change": "RMSNorm gains fitted on calibration text, stream not centred"})
    elif norm == "centered" and arch.norm_bias:
        out.append({"module": "norm", "change": "stream centred, LayerNorm beta dropped"})
    if arch.parallel_residual:
        out.append({"module": "residual", "change": "parallel residual made sequential: the MLP reads the stream "
                                                    "after attention instead of the block's input"})
    if arch.qk_layernorm:
        out.append({"module": "attention", "change": "per-head q/k LayerNorm (qk_layernorm) dropped"})
    if arch.clip_qkv is not None:
        out.append({"module": "attention", "change": f"clip_qkv ({arch.clip_qkv}) dropped"})
    if not arch.gated_mlp and mlp_target == "runtimes" and arch.hidden_act != "silu":
        out.append({"module": "mlp", "change": f"non-gated {arch.hidden_act} MLP as a SiLU-gated one: "
                                               f"act(x) ~ silu({GELU_SIGMOID} x) / {GELU_SIGMOID}"})
    return out


def check_mapping(family: Family, arch: Arch, *, norm: str, mlp_target: str, where: str) -> None:
    """Refuse a mapping that makes no sense for this source, with the reason."""
    if norm not in NORMS:
        raise MappingError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    if mlp_target not in MLP_TARGETS:
        raise MappingError(f"unknown mlp_target {mlp_target!r}; expected one of {', '.join(MLP_TARGETS)}")
    if norm == "fit" and not arch.norm_weight:
        raise MappingError(f"{where}: norm mapping 'fit' fits per-channel gains, but {family.name}'s LayerNorms "
                           "have no weights; use 'exact' (with the stream centred, g = 1 is exact)")
    if norm == "exact":
        if arch.qk_layernorm:
            raise MappingError(f"{where}: qk_layernorm=true (per-head q/k LayerNorm) has no stock Llama equivalent, "
                               "so 'exact' is impossible; use 'centered' to convert it approximately (measured)")
        if arch.clip_qkv is not None:
            raise MappingError(f"{where}: clip_qkv={arch.clip_qkv} has no stock Llama equivalent, so 'exact' is "
                               "impossible; use 'centered' to convert it approximately (measured)")


def plan_conversion(
    *, family: Family, arch: Arch, source_shapes: dict[str, tuple[int, ...]], norm: str, dtype: str,
    mlp_target: str = "runtimes", where: str = "source",
) -> Plan:
    """Resolve the mapping for one checkpoint, accounting for every source and target tensor.

    ``source_shapes`` maps every tensor the checkpoint holds to its shape. Raises :class:`MappingError` for a
    tensor neither used nor dropped, a target nothing writes, or a mapping refused for this source, and
    :class:`CheckpointError` for a missing tensor or one with the wrong shape.
    """
    check_mapping(family, arch, norm=norm, mlp_target=mlp_target, where=where)
    want = logical_shapes(arch)
    # Which source tensor is which logical tensor (first matching spelling), and the dropped ones.
    found: dict[str, str] = {}  # instantiated logical name ("q.w@3") -> source name
    dropped: list[tuple[str, str]] = []
    dropped_table: dict[tuple[str, str], int] = {}
    patterns = [(lg, t, _regex(t)) for lg, ts in family.tensors.items() for t in ts]
    drops = [(t, why, _regex(t)) for t, why in family.dropped.items()]
    for name in source_shapes:
        hit = None
        for logical, template, rx in patterns:
            m = rx.match(name)
            if m:
                hit = (logical, template, m.groupdict().get("i"))
                break
        if hit is not None:
            logical, template, layer = hit
            if layer is not None and int(layer) >= arch.num_layers:
                raise MappingError(f"source tensor {name!r} belongs to layer {layer}, but config.json has "
                                   f"{arch.num_layers} layers")
            if logical == "head.w" and arch.tied:
                why = "tied to the embedding (tie_word_embeddings): the embedding is read instead"
                dropped.append((name, why))
                dropped_table[(template, why)] = dropped_table.get((template, why), 0) + 1
                continue
            if logical not in want:
                raise MappingError(f"source tensor {name!r} is not part of a {family.name} model of this config "
                                   f"(config.json does not enable it)")
            key = f"{logical}@{layer}"
            if key in found:
                raise MappingError(f"source tensors {found[key]!r} and {name!r} are both {logical} of layer {layer}")
            found[key] = name
            continue
        for template, why, rx in drops:
            m = rx.match(name)
            if m:
                layer = m.groupdict().get("i")
                if layer is not None and int(layer) >= arch.num_layers:
                    raise MappingError(f"source tensor {name!r} belongs to layer {layer}, but config.json has "
                                       f"{arch.num_layers} layers")
                if "q_layernorm" in template or "k_layernorm" in template:
                    if not arch.qk_layernorm:
                        raise MappingError(f"source tensor {name!r} is a qk_layernorm weight, but config.json "
                                           "says qk_layernorm=false")
                if template.endswith("inv_freq") and tuple(source_shapes[name]) != (arch.rotary_dim // 2,):
                    raise CheckpointError(f"tensor {name!r} has shape {tuple(source_shapes[name])}, expected "
                                          f"({arch.rotary_dim // 2},) (a RoPE buffer of {arch.rotary_dim} rotated "
                                          "channels)")
                dropped.append((name, why))
                dropped_table[(template, why)] = dropped_table.get((template, why), 0) + 1
                break
        else:
            raise MappingError(f"source tensor {name!r} is neither mapped nor dropped by the {family.name}->Llama "
                               "table")

    def src(logical: str, i: int | None = None) -> str:
        key = f"{logical}@{i}"
        if key not in found:
            name = family.tensors[logical][0].format(i=i)
            raise CheckpointError(f"checkpoint lacks tensor {name!r} that a {family.name} model of this config needs")
        name = found[key]
        if tuple(source_shapes[name]) != want[logical]:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(source_shapes[name])}, expected {want[logical]}")
        return name

    for logical in want:  # every needed tensor present, with its shape
        for i in range(arch.num_layers) if "{i}" in family.tensors[logical][0] else [None]:
            src(logical, i)
    if arch.qk_layernorm and not any("layernorm" in n and ("q_" in n or "k_" in n) for n, _ in dropped):
        raise CheckpointError(f"{where}: config.json says qk_layernorm=true but the checkpoint holds no q/k "
                              "LayerNorm weights")

    cfg = llama_config(arch, norm=norm, dtype=dtype, mlp_target=mlp_target)
    target_shapes = llama_shapes(cfg)
    centred = norm in CENTRED_NORMS
    steps: dict[str, Step] = {}
    table: dict[tuple[str, str, str], int] = {}

    def add(target_t: str, op: str, sources: tuple[str, ...], i: int | None = None, *,
            rows: tuple[int, ...] | None = None, scale: float = 1.0, src_t: str | None = None) -> None:
        target = target_t.format(i=i)
        if target in steps:
            raise MappingError(f"target tensor {target!r} is written twice")
        if target not in target_shapes:
            raise MappingError(f"mapping writes {target!r}, which a stock LlamaForCausalLM of this config lacks")
        steps[target] = Step(target, op, sources, target_shapes[target], target_t, rows, scale)
        label = src_t or (" @ ".join(_template(family, s) for s in sources) if sources else "(none)")
        table[(label, target_t, op)] = table.get((label, target_t, op), 0) + 1

    attn_bias, mlp_bias = cfg["attention_bias"], cfg["mlp_bias"]
    perm = rotary_rows(arch)
    hd, nq, nkv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    permute = perm != list(range(hd))

    def head_rows(offset: int, n_heads: int, stride: int, rotary: bool) -> tuple[int, ...] | None:
        """Source rows of one projection: heads at ``offset + h * stride``, channels permuted for RoPE."""
        order = perm if rotary else list(range(hd))
        rows = [offset + h * stride + c for h in range(n_heads) for c in order]
        return None if rows == list(range(len(rows))) else tuple(rows)

    gelu = not arch.gated_mlp and cfg["hidden_act"] == "silu" and arch.hidden_act != "silu"
    s = GELU_SIGMOID if gelu else 1.0
    add("model.embed_tokens.weight", "center_rows" if centred else "copy", (src("embed"),))
    for i in range(arch.num_layers):
        ln1b = src("ln1.b", i) if arch.norm_bias else None
        ln2 = "ln1" if arch.shared_norm else "ln2"
        ln2b = src(f"{ln2}.b", i) if arch.norm_bias else None
        fold = norm == "exact" and arch.norm_bias
        # attention: q, k (RoPE-permuted), v; each from its own tensor or from the fused per-head QKV
        for j, (name, n_heads, rotary) in enumerate((("q", nq, True), ("k", nkv, True), ("v", nkv, False))):
            if arch.fused_qkv:
                w, b = src("qkv.w", i), (src("qkv.b", i) if arch.qkv_bias else None)
                rows = head_rows(j * hd, n_heads, 3 * hd, rotary)
            else:
                w, b = src(f"{name}.w", i), (src(f"{name}.b", i) if arch.qkv_bias else None)
                rows = head_rows(0, n_heads, hd, rotary and permute)
            target = f"{_ATTN}.{name}_proj"
            add(f"{target}.weight", "copy", (w,), i, rows=rows)
            if attn_bias:
                if fold:
                    add(f"{target}.bias", "fold", (w, ln1b) + ((b,) if b else ()), i, rows=rows)
                elif b:
                    add(f"{target}.bias", "copy", (b,), i, rows=rows)
                else:
                    add(f"{target}.bias", "zeros", (), i)
        add(f"{_ATTN}.o_proj.weight", "center_out" if centred else "copy", (src("o.w", i),), i)
        if attn_bias:
            if arch.o_bias:
                add(f"{_ATTN}.o_proj.bias", "center_vec" if centred else "copy", (src("o.b", i),), i)
            else:
                add(f"{_ATTN}.o_proj.bias", "zeros", (), i)
        # MLP: gated as it is; non-gated as gate = fc1, up = the constant 1 (weight 0, bias 1)
        for name in ("gate", "up"):
            target = f"{_MLP}.{name}_proj"
            if not arch.gated_mlp and name == "up":
                add(f"{target}.weight", "zeros", (), i)
                add(f"{target}.bias", "fill", (), i, scale=1.0)
                continue
            logical = name if arch.gated_mlp else "fc1"
            w, b = src(f"{logical}.w", i), (src(f"{logical}.b", i) if arch.mlp_bias else None)
            add(f"{target}.weight", "copy", (w,), i, scale=s)
            if mlp_bias:
                if fold:
                    add(f"{target}.bias", "fold", (w, ln2b) + ((b,) if b else ()), i, scale=s)
                elif b:
                    add(f"{target}.bias", "copy", (b,), i, scale=s)
                else:
                    add(f"{target}.bias", "zeros", (), i)
        add(f"{_MLP}.down_proj.weight", "center_out" if centred else "copy", (src("down.w", i),), i, scale=1 / s)
        if mlp_bias:
            if arch.mlp_bias:
                add(f"{_MLP}.down_proj.bias", "center_vec" if centred else "copy", (src("down.b", i),), i)
            else:
                add(f"{_MLP}.down_proj.bias", "zeros", (), i)
        for site, logical in (("input_layernorm", "ln1"), ("post_attention_layernorm", ln2)):
            _gain(add, f"model.layers.{{i}}.{site}.weight", src(f"{logical}.w", i) if arch.norm_weight else None,
                  norm, i)
    _gain(add, "model.norm.weight", src("final.w") if arch.norm_weight else None, norm, None)
    if not cfg["tie_word_embeddings"]:
        add("lm_head.weight", "copy", (src("embed") if arch.tied else src("head.w"),))

    read = {n for step in steps.values() for n in step.sources}
    for key, name in found.items():  # the betas and biases no step reads: dropped, with the reason
        if name not in read:
            logical = key.split("@")[0]
            why = UNUSED_REASONS[logical.split(".")[0] if logical.startswith("ln") else logical]
            template = _template(family, name)
            dropped.append((name, why))
            dropped_table[(template, why)] = dropped_table.get((template, why), 0) + 1
    missing = [t for t in target_shapes if t not in steps]
    if missing:
        raise MappingError(f"target tensor {missing[0]!r} is never written ({len(missing)} missing)")
    for t, step in steps.items():
        if step.op in ("copy", "gain", "center_rows", "center_out", "center_vec") and step.rows is None:
            have = tuple(source_shapes[step.sources[0]])
            if have != step.shape:
                raise MappingError(f"target tensor {t!r} would have shape {have}, Llama expects {step.shape}")

    div = divergences(arch, norm=norm, mlp_target=mlp_target)
    offset = {"head": src("embed") if arch.tied else src("head.w"),
              "beta": src("final.b") if arch.norm_bias else None,
              "bias": src("head.b") if arch.head_bias else None}
    has_offset = offset["beta"] is not None or offset["bias"] is not None
    return Plan(
        norm=norm,
        family=family.name,
        steps=[steps[t] for t in target_shapes],  # Llama's own order: embed, layers, norm, lm_head
        dropped=sorted(dropped),
        llama_config=cfg,
        exactness=APPROX if div else (OFFSET if has_offset else EXACT),
        divergences=div,
        offset=offset,
        table=[{"source": s_, "target": t, "rule": op, "count": n} for (s_, t, op), n in table.items()],
        dropped_table=[{"source": s_, "reason": r, "count": n} for (s_, r), n in dropped_table.items()],
    )


def _gain(add: Any, target_t: str, gamma: str | None, norm: str, i: int | None) -> None:
    if norm == "fit":
        add(target_t, "fit_gain", (gamma,), i)
    elif gamma is None:
        add(target_t, "ones", (), i, src_t="(weightless LayerNorm)")
    else:
        add(target_t, "gain", (gamma,), i)


def _template(family: Family, name: str) -> str:
    """The family template a concrete source name instantiates (for the mapping table)."""
    for templates in family.tensors.values():
        for t in templates:
            if _regex(t).match(name):
                return t
    return name
