"""The generic planner: one source family's checkpoint + a norm mapping -> the steps that write a stock Llama.

A family (:mod:`kept.convert.families`) says where each logical tensor lives; this module says what every Llama
tensor is computed from, for every family alike, and accounts for every tensor: a source tensor that is neither
used nor dropped with a reason, a missing or misshapen source tensor, or a Llama tensor nothing writes is an
error naming it. The algebra of each rule is in docs/architecture.md; the arithmetic in :mod:`kept.convert.ops`.

Operations of a :class:`Step` (``rows``: a row selection of the source, e.g. one of q/k/v from a fused QKV, the
gate half of a fused gate_up, or the RoPE permutation; ``scale``: a factor on the result; ``fold``: a fitted
per-row scale, see :class:`FitSite`):

* ``copy``         NPM: identity (rows / scale / fold as given).
* ``center_rows``  rows written into the residual stream (embedding): ``E - E.mean(dim=1)``.
* ``center_out``   a projection added to the stream (``[out, in]``): ``W - W.mean(dim=0)``.
* ``center_vec``   a bias added to the stream: ``b - b.mean()``.
* ``gain``         RMSNorm weight ``g = gamma + shift`` (Gemma's and LayerNorm1P's ``1 + w``); ``ones``: ``g = 1``
                   (weightless LayerNorm); ``fit_gain``: least-squares gains fitted on calibration text.
* ``fold``         ``b = W[rows] @ beta (+ b_src[rows])``: a LayerNorm's beta folded into the next linear layer.
* ``unit_rows``    rows divided by their L2 norm (Baichuan2's NormHead, normalised once).
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
RMS_NORMS = ("paper", "exact")  # an RMSNorm source: the gains are copied (the two are the same mapping)
MLP_TARGETS = ("runtimes", "transformers")
GELU_SIGMOID = 1.702  # GELU(x) ~ x * sigmoid(1.702 x) = silu(1.702 x) / 1.702
GELU_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "gelu_accurate", "quick_gelu")
FROZEN_FACTOR = 1e9  # RoPE factor that freezes the channels a partial-rotary source leaves unrotated
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
FOLD_CHANGE = {
    "q": "q norm replaced by a per-channel scale fitted on calibration text, folded into q_proj",
    "k": "k norm replaced by a per-channel scale fitted on calibration text, folded into k_proj",
    "o": "norm on the attention output replaced by a per-channel scale fitted on calibration text, folded into o_proj",
    "down": "norm on the MLP output replaced by a per-channel scale fitted on calibration text, folded into down_proj",
}
FOLD_TENSORS = {"q": "qn", "k": "kn", "o": "pn1", "down": "pn2"}  # fold site -> logical norm tensors it replaces
XIELU = {"alpha_p": (1,), "alpha_n": (1,), "beta": (), "eps": ()}  # an xIELU activation's tensors

QK_NORM = re.compile(r"\.(q|k)_(layer)?norm\b")  # a dropped per-head q/k LayerNorm (qk_layernorm)
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
    shift: float = 0.0  # gain: added to the stored weight
    fold: str | None = None  # key of a fitted per-row scale (FitSite.key) multiplying the result
    fold_rows: tuple[int, ...] | None = None  # its entries for the target's rows (None: in order)
    row_scale: tuple[float, ...] | None = None  # a fixed factor per target row

    @property
    def verbatim(self) -> bool:
        """The target is the source's values unchanged (a cast at most)."""
        return (self.op in ("copy", "gain") and self.rows is None and self.scale == 1.0 and self.shift == 0.0
                and self.fold is None and self.row_scale is None)


@dataclass(frozen=True)
class FitSite:
    """A value fitted on the source's activations over calibration text before any weight is written.

    ``kind`` ``gain``: an RMSNorm gain g minimising E||g * x/rms(x) - y||^2 (Appendix A), x the input of ``module``
    (of layer ``layer``; None: the final norm) and y its output, or x itself (``identity``: the source has no norm
    there). ``kind`` ``diag``: a per-channel s minimising E||s * u - y||^2, u and y the input and output of a norm
    stock Llama cannot hold; s is folded into the rows of the projection that produces u."""

    key: str
    kind: str  # gain | diag
    layer: int | None
    module: str  # module path inside the layer (the final norm: the runtime's final norm)
    identity: bool = False
    pairs: tuple[int, int] | None = None  # (head_dim, rotary_dim): average s over each rotate-half pair


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
    offset: dict[str, Any] = field(default_factory=dict)  # head / beta / bias source names and scale of the offset
    table: list[dict[str, Any]] = field(default_factory=list)
    dropped_table: list[dict[str, Any]] = field(default_factory=list)
    fits: list[FitSite] = field(default_factory=list)  # computed on calibration text before the weights
    fit_reads: list[str] = field(default_factory=list)  # source tensors only the fits read (norms Llama lacks)


# ---- names and shapes ------------------------------------------------------------------------------------------


def _regex(template: str) -> re.Pattern[str]:
    rx = re.escape(template)
    for key in ("i", "h"):
        rx = rx.replace(re.escape("{" + key + "}"), rf"(?P<{key}>0|[1-9][0-9]*)")
    return re.compile("^" + rx + "$")


def logical_shapes(arch: Arch, family: Family | None = None) -> dict[str, tuple[int, ...]]:
    """The logical tensors (``{i}``-templated) a checkpoint of this architecture holds, with their shapes (the
    family's fold-site norms: their shapes as transformers' class of the family holds them)."""
    d, inter, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_heads * hd, arch.num_kv_heads * hd
    s: dict[str, tuple[int, ...]] = {"embed": (arch.vocab_size, d)}
    norms = () if not arch.pre_norm else ("ln1",) if arch.shared_norm else ("ln1", "ln2")
    for n in norms:
        if arch.norm_weight:
            s[f"{n}.w"] = (d,)
        if arch.norm_bias:
            s[f"{n}.b"] = (d,)
    if arch.qkv_layout != "separate":
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
    if arch.fused_gate_up:
        s["gate_up.w"] = (2 * inter, d)
        if arch.mlp_bias:
            s["gate_up.b"] = (2 * inter,)
    for name in () if arch.fused_gate_up else ("gate", "up") if arch.gated_mlp else ("fc1",):
        s[f"{name}.w"] = (inter, d)
        if arch.mlp_bias:
            s[f"{name}.b"] = (inter,)
    s["down.w"] = (d, inter)
    if arch.mlp_bias:
        s["down.b"] = (d,)
    if arch.hidden_act == "xielu":  # xIELU's per-layer parameters (Apertus): Llama's own act_fn holds them
        s.update({f"act.{k}": shape for k, shape in XIELU.items()})
    for site in arch.folds:  # the norms a fitted scale replaces: read by the fit, shaped as the family stores them
        base = FOLD_TENSORS[site]
        s[f"{base}.w"] = fold_shape(arch, site)
    if arch.norm_weight:
        s["final.w"] = (d,)
    if arch.norm_bias:
        s["final.b"] = (d,)
    if not arch.tied:
        s["head.w"] = (arch.vocab_size, d)
    if arch.head_bias:
        s["head.b"] = (arch.vocab_size,)
    return s


def fold_shape(arch: Arch, site: str) -> tuple[int, ...]:
    """Shape of the norm weight a fold site replaces: a q/k norm over each head (head_dim,) or over all heads
    (heads * head_dim,: OLMo-2, :attr:`Arch.qk_norm_span`), or the width (hidden,) for block-output norms."""
    if site in ("o", "down"):
        return (arch.hidden_size,)
    heads = arch.num_heads if site == "q" else arch.num_kv_heads
    return (heads * arch.head_dim,) if arch.qk_norm_span == "full" else (arch.head_dim,)


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
    d, r, theta, scaling = arch.head_dim, arch.rotary_dim, arch.rope_theta, arch.rope_scaling
    if r == d:  # every scaling Llama computes carries over as it is (an interleaved layout is permuted to halves)
        return {"rope_theta": theta, "rope_type": "default", **scaling}
    if not scaling or scaling["rope_type"] == "dynamic":
        # The permuted channels give Llama's pair j the frequency theta'^(-2j/d) = theta^(-2j/r): the source's for
        # j < r/2. Pairs j >= r/2 (the unrotated channels) have wavelengths >= 2*pi*theta; the llama3 schedule
        # divides every wavelength above its low-frequency boundary by FROZEN_FACTOR, freezing them. Both
        # boundaries sit strictly between the longest rotated wavelength and 2*pi*theta: no frequency is smoothed.
        # (Dynamic NTK scaling starts past the context; beyond it the divergence is reported.)
        a, b = 2 * math.pi * theta ** ((r - 2) / r), 2 * math.pi * theta
        high, low = a ** (2 / 3) * b ** (1 / 3), a ** (1 / 3) * b ** (2 / 3)  # wavelength boundaries, high < low
        orig = max(1, arch.max_position_embeddings // 2)  # only the ratios orig / factor matter
        return {"rope_theta": theta ** (d / r), "rope_type": "llama3", "factor": FROZEN_FACTOR,
                "low_freq_factor": orig / low, "high_freq_factor": orig / high,
                "original_max_position_embeddings": orig}
    return _partial_longrope(arch)


def _partial_longrope(arch: Arch) -> dict[str, Any]:
    """A partial-rotary source with RoPE scaling (linear, yarn, llama3, longrope) as Llama's ``longrope``: its
    per-pair factors ext_j make Llama's pair j rotate at the source's (scaled) frequency for j < r/2, and freeze the
    rest; the source's cos/sin scale is the explicit ``attention_factor``. Frequencies are the source's own, computed
    by transformers' RoPE functions for r rotated channels (short and, for longrope, long)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d, r, theta, scaling = arch.head_dim, arch.rotary_dim, arch.rope_theta, arch.rope_scaling
    kind = scaling["rope_type"]
    src = LlamaConfig(hidden_size=arch.num_heads * d, num_attention_heads=arch.num_heads, head_dim=d,
                      max_position_embeddings=arch.max_position_embeddings,
                      rope_parameters={**scaling, "rope_theta": theta, "partial_rotary_factor": r / d})
    orig = int(scaling.get("original_max_position_embeddings") or arch.max_position_embeddings)
    short, attention = ROPE_INIT_FUNCTIONS[kind](src, None)
    long = ROPE_INIT_FUNCTIONS[kind](src, None, seq_len=orig + 1)[0] if kind == "longrope" else short
    base = theta ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)  # theta'^(-2j/d) for j < r/2
    frozen = [FROZEN_FACTOR] * ((d - r) // 2)

    def ext(inv: torch.Tensor) -> list[float]:
        return (base / inv.double()).tolist() + frozen

    return {"rope_theta": theta ** (d / r), "rope_type": "longrope", "short_factor": ext(short),
            "long_factor": ext(long), "attention_factor": float(attention), "original_max_position_embeddings": orig}


def llama_config(arch: Arch, *, norm: str, dtype: str, mlp_target: str = "runtimes") -> dict[str, Any]:
    """config.json of the stock ``LlamaForCausalLM`` that holds the converted weights.

    The keys are those ``LlamaConfig.to_dict()`` writes (checked in the tests), built without importing
    transformers' model code (~130 MB of resident memory). RoPE is written at top level too (``rope_theta``,
    ``rope_scaling``, ``original_max_position_embeddings``), which transformers 4.x and llama.cpp's converter read.
    """
    from importlib.metadata import version

    attn_bias, mlp_bias = _biases(arch, norm)
    rope = _rope(arch)
    act = arch.hidden_act if mlp_target == "transformers" or arch.hidden_act not in GELU_ACTS else "silu"
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
        "tie_word_embeddings": tied_target(arch, norm),
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


def tied_target(arch: Arch, norm: str) -> bool:
    """A tied source stays tied unless the head must differ from the embedding: centring meets a final gain (g * n
    is then not orthogonal to the all-ones direction, so the head keeps the uncentred rows), or an embedding scale,
    a logit scale or a normalised head is folded into one of the two."""
    return (arch.tied and not (norm in CENTRED_NORMS and arch.norm_kind == "layer" and arch.norm_weight)
            and arch.embed_scale == 1.0 and arch.logit_scale == 1.0 and not arch.head_norm)


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
        if cfg["hidden_act"] == "xielu":  # LlamaMLP's act_fn module carries them
            shapes.update({f"{p}.mlp.act_fn.{k}": shape for k, shape in XIELU.items()})
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
    """Per-head source channel of each Llama channel: source pair j -- (j, j + r/2) for rotate-half, (2j, 2j + 1)
    for an interleaved layout -- lands on Llama pair (j, j + d/2); the unrotated channels fill the rest in order
    (identity for full rotate-half rotary)."""
    d, r = arch.head_dim, arch.rotary_dim
    half, rest = r // 2, (d - r) // 2
    if arch.rotary_style == "interleaved":
        pairs = [(2 * j, 2 * j + 1) for j in range(half)]
    else:
        pairs = [(j, half + j) for j in range(half)]
    first = [a for a, _ in pairs] + [r + j for j in range(rest)]
    second = [b for _, b in pairs] + [r + rest + j for j in range(rest)]
    return first + second


def query_scale(arch: Arch) -> float:
    """The factor folded into q_proj so that Llama's q.k scale (head_dim ** -0.5) gives the source's."""
    return 1.0 if arch.attn_scale is None else arch.attn_scale * math.sqrt(arch.head_dim)


def qk_channels(arch: Arch, llama_cfg: dict[str, Any]) -> tuple[list[int], list[float], list[float]]:
    """How one Llama head's q and k channels are the source's: channel c is the source's channel ``rows[c]``
    (:func:`rotary_rows`) times ``q_factor[c]`` / ``k_factor[c]`` (the q.k scale folded into q, and the frozen
    channels of a partial rotary carried as longrope divided by its attention factor)."""
    frozen = _frozen_rows(arch, llama_cfg)
    per = list(frozen[: arch.head_dim]) if frozen else [1.0] * arch.head_dim
    return rotary_rows(arch), [query_scale(arch) * f for f in per], per


def head_offsets(arch: Arch) -> dict[str, list[int]]:
    """Row offset of each head of q, k and v in the (fused) source projection(s)."""
    hd, nq, nkv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    layout = arch.qkv_layout
    if layout == "separate":
        return {p: [h * hd for h in range(n)] for p, n in (("q", nq), ("k", nkv), ("v", nkv))}
    if layout == "heads":  # [head: q, k, v] (GPT-NeoX, Persimmon, Falcon without multi-query)
        return {p: [h * 3 * hd + j * hd for h in range(nq)] for j, p in enumerate("qkv")}
    if layout == "blocks":  # [q heads | k heads | v heads] (Phi-3, Baichuan2, Falcon-7B's multi-query)
        return {"q": [h * hd for h in range(nq)], "k": [(nq + h) * hd for h in range(nkv)],
                "v": [(nq + nkv + h) * hd for h in range(nkv)]}
    if layout == "groups":  # [kv group: q * g, k, v] (InternLM2, Falcon-40B's new_decoder_architecture)
        g = nq // nkv
        return {"q": [(h // g) * (g + 2) * hd + (h % g) * hd for h in range(nq)],
                "k": [j * (g + 2) * hd + g * hd for j in range(nkv)],
                "v": [j * (g + 2) * hd + (g + 1) * hd for j in range(nkv)]}
    raise AssertionError(f"unknown qkv_layout {layout!r}")  # pragma: no cover - families set one of the above


# ---- the plan ----------------------------------------------------------------------------------------------------


def divergences(arch: Arch, *, norm: str, mlp_target: str) -> list[dict[str, str]]:
    """What stock Llama cannot compute of this source under this mapping (empty: exact, maybe up to an offset)."""
    out = []
    layer_norm = arch.norm_kind == "layer"
    if norm == "paper" and layer_norm:
        out.append({"module": "norm", "change": "RMSNorm with gamma copied, beta dropped, stream not centred "
                                                "(the report's OPM)" if arch.norm_weight else
                    "RMSNorm with g = 1 on a stream that is not centred (the report's OPM)"})
    elif norm == "fit":
        out.append({"module": "norm", "change": "RMSNorm gains fitted on calibration text, stream not centred"})
    elif norm == "centered" and arch.norm_bias:
        out.append({"module": "norm", "change": "stream centred, LayerNorm beta dropped"})
    if not arch.pre_norm:
        out.append({"module": "norm", "change": "the source reads the raw stream (no norm before attention and MLP): "
                                                "Llama's input norms get gains fitted on calibration text"})
    if arch.parallel_residual:
        out.append({"module": "residual", "change": "parallel residual made sequential: the MLP reads the stream "
                                                    "after attention instead of the block's input"})
    if arch.qk_layernorm:
        out.append({"module": "attention", "change": "per-head q/k LayerNorm (qk_layernorm) dropped"})
    if arch.clip_qkv is not None:
        out.append({"module": "attention", "change": f"clip_qkv ({arch.clip_qkv}) dropped"})
    for site in arch.folds:
        out.append({"module": "attention" if site in ("q", "k", "o") else "mlp", "change": FOLD_CHANGE[site]})
    if arch.hidden_act in GELU_ACTS and mlp_target == "runtimes":
        kind = "non-gated" if not arch.gated_mlp else "gated"
        out.append({"module": "mlp", "change": f"{kind} {arch.hidden_act} MLP as a SiLU-gated one: "
                                               f"act(x) ~ silu({GELU_SIGMOID} x) / {GELU_SIGMOID}"})
    if arch.rotary_dim < arch.head_dim and arch.rope_scaling.get("rope_type") == "dynamic":
        out.append({"module": "rope", "change": "dynamic NTK scaling with partial rotary: exact up to "
                                                "max_position_embeddings, other frequencies beyond it"})
    out += [{"module": m, "change": c} for m, c in arch.divergent]
    return out


def check_mapping(family: Family, arch: Arch, *, norm: str, mlp_target: str, where: str) -> None:
    """Refuse a mapping that makes no sense for this source, with the reason."""
    if norm not in NORMS:
        raise MappingError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    if mlp_target not in MLP_TARGETS:
        raise MappingError(f"unknown mlp_target {mlp_target!r}; expected one of {', '.join(MLP_TARGETS)}")
    if arch.hidden_size % arch.num_heads:
        raise MappingError(f"{where}: hidden_size {arch.hidden_size} is not divisible by num_attention_heads "
                           f"{arch.num_heads}; transformers' LlamaConfig refuses that even with an explicit head_dim")
    if arch.norm_kind == "rms" and norm not in RMS_NORMS:
        raise MappingError(f"{where}: norm mapping {norm!r} is for LayerNorm sources; {family.name}'s norms are "
                           "RMSNorm already (the gains are copied): use 'exact' (or leave --norm out)")
    if norm == "fit" and not arch.norm_weight:
        raise MappingError(f"{where}: norm mapping 'fit' fits per-channel gains, but {family.name}'s LayerNorms "
                           "have no weights; use 'exact' (with the stream centred, g = 1 is exact)")
    if mlp_target == "runtimes" and arch.hidden_act not in GELU_ACTS + ("silu",):
        raise MappingError(f"{where}: mlp_target 'runtimes' writes a SiLU MLP, and {family.name}'s hidden_act "
                           f"{arch.hidden_act!r} has no SiLU form; use mlp_target 'transformers' (exact, "
                           "transformers only)")
    if norm == "exact":
        if arch.qk_layernorm:
            raise MappingError(f"{where}: qk_layernorm=true (per-head q/k LayerNorm) has no stock Llama equivalent, "
                               "so 'exact' is impossible; use 'centered' to convert it approximately (measured)")
        if arch.clip_qkv is not None:
            raise MappingError(f"{where}: clip_qkv={arch.clip_qkv} has no stock Llama equivalent, so 'exact' is "
                               "impossible; use 'centered' to convert it approximately (measured)")


def default_norm(family: Family, arch: Arch, *, mlp_target: str = "transformers", where: str = "source") -> str:
    """The mapping ``kept convert`` picks without ``--norm``: the most faithful one the source allows (``exact``,
    else ``centered``, else ``paper``)."""
    for norm in ("exact", "centered", "paper"):
        try:
            check_mapping(family, arch, norm=norm, mlp_target=mlp_target, where=where)
            return norm
        except MappingError:
            continue
    check_mapping(family, arch, norm="paper", mlp_target=mlp_target, where=where)  # raises its reason
    return "paper"  # pragma: no cover


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
                if QK_NORM.search(template):
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
    if arch.qk_layernorm and not any(QK_NORM.search(n) for n, _ in dropped):
        raise CheckpointError(f"{where}: config.json says qk_layernorm=true but the checkpoint holds no q/k "
                              "LayerNorm weights")

    cfg = llama_config(arch, norm=norm, dtype=dtype, mlp_target=mlp_target)
    target_shapes = llama_shapes(cfg)
    centred = norm in CENTRED_NORMS and arch.norm_kind == "layer"
    steps: dict[str, Step] = {}
    table: dict[tuple[str, str, str], int] = {}
    fits: list[FitSite] = []

    def add(target_t: str, op: str, sources: tuple[str, ...], i: int | None = None, *, src_t: str | None = None,
            **kw: Any) -> None:
        target = target_t.format(i=i)
        if target in steps:
            raise MappingError(f"target tensor {target!r} is written twice")
        if target not in target_shapes:
            raise MappingError(f"mapping writes {target!r}, which a stock LlamaForCausalLM of this config lacks")
        steps[target] = Step(target, op, sources, target_shapes[target], target_t, **kw)
        label = src_t or (" @ ".join(_template(family, s) for s in sources) if sources else "(none)")
        if kw.get("fold"):
            label += " x fitted scale"
        table[(label, target_t, op)] = table.get((label, target_t, op), 0) + 1

    attn_bias, mlp_bias = cfg["attention_bias"], cfg["mlp_bias"]
    perm = rotary_rows(arch)
    hd, inter = arch.head_dim, arch.intermediate_size
    offsets = head_offsets(arch)
    q_scale = query_scale(arch)

    def head_rows(proj: str, rotary: bool) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """Source rows of one projection's heads (channels permuted for RoPE), and the same rows as indices into
        that projection alone (the fitted scale of a fold is indexed so)."""
        order = perm if rotary else list(range(hd))
        rows = [o + c for o in offsets[proj] for c in order]
        own = [h * hd + c for h in range(len(offsets[proj])) for c in order]
        whole = arch.qkv_layout == "separate" and rows == list(range(len(rows)))  # the whole source tensor
        return None if whole else tuple(rows), None if own == list(range(len(own))) else tuple(own)

    unscaled = _frozen_rows(arch, cfg)
    gelu = cfg["hidden_act"] == "silu" and arch.hidden_act in GELU_ACTS
    s = GELU_SIGMOID if gelu else 1.0
    add("model.embed_tokens.weight", "center_rows" if centred else "copy", (src("embed"),), scale=arch.embed_scale)
    for i in range(arch.num_layers):
        ln1b = src("ln1.b", i) if arch.norm_bias and arch.pre_norm else None
        ln2 = "ln1" if arch.shared_norm else "ln2"
        ln2b = src(f"{ln2}.b", i) if arch.norm_bias and arch.pre_norm else None
        fold = norm == "exact" and arch.norm_bias
        # attention: q, k (RoPE-permuted), v; each from its own tensor or from the fused QKV
        for name in ("q", "k", "v"):
            rows, own = head_rows(name, name != "v")
            if arch.qkv_layout != "separate":
                w, b = src("qkv.w", i), (src("qkv.b", i) if arch.qkv_bias else None)
            else:
                w, b = src(f"{name}.w", i), (src(f"{name}.b", i) if arch.qkv_bias else None)
                own = rows
            f = _fit(fits, "diag", name, i, family, arch) if name in arch.folds else None
            kw = dict(rows=rows, scale=q_scale if name == "q" else 1.0, fold=f, fold_rows=own if f else None,
                      row_scale=unscaled if name != "v" else None)
            target = f"{_ATTN}.{name}_proj"
            add(f"{target}.weight", "copy", (w,), i, **kw)
            if attn_bias:
                if fold:
                    add(f"{target}.bias", "fold", (w, ln1b) + ((b,) if b else ()), i, **kw)
                elif b:
                    add(f"{target}.bias", "copy", (b,), i, **kw)
                else:
                    add(f"{target}.bias", "zeros", (), i)
        f = _fit(fits, "diag", "o", i, family, arch) if "o" in arch.folds else None
        add(f"{_ATTN}.o_proj.weight", "center_out" if centred else "copy", (src("o.w", i),), i,
            scale=arch.residual_scale, fold=f)
        if attn_bias:
            if arch.o_bias:
                add(f"{_ATTN}.o_proj.bias", "center_vec" if centred else "copy", (src("o.b", i),), i,
                    scale=arch.residual_scale, fold=f)
            else:
                add(f"{_ATTN}.o_proj.bias", "zeros", (), i)
        # MLP: gated as it is (fused gate_up split by rows); non-gated as gate = fc1, up = the constant 1
        for name in ("gate", "up"):
            target = f"{_MLP}.{name}_proj"
            if not arch.gated_mlp and name == "up":
                add(f"{target}.weight", "zeros", (), i)
                add(f"{target}.bias", "fill", (), i, scale=1.0)
                continue
            if arch.fused_gate_up:
                logical, rows = "gate_up", tuple(range(inter)) if name == "gate" else tuple(range(inter, 2 * inter))
            else:
                logical, rows = (name if arch.gated_mlp else "fc1"), None
            w, b = src(f"{logical}.w", i), (src(f"{logical}.b", i) if arch.mlp_bias else None)
            scale = s if name == "gate" else 1.0
            add(f"{target}.weight", "copy", (w,), i, rows=rows, scale=scale)
            if mlp_bias:
                if fold:
                    add(f"{target}.bias", "fold", (w, ln2b) + ((b,) if b else ()), i, rows=rows, scale=scale)
                elif b:
                    add(f"{target}.bias", "copy", (b,), i, rows=rows, scale=scale)
                else:
                    add(f"{target}.bias", "zeros", (), i)
        f = _fit(fits, "diag", "down", i, family, arch) if "down" in arch.folds else None
        down = arch.residual_scale / s
        add(f"{_MLP}.down_proj.weight", "center_out" if centred else "copy", (src("down.w", i),), i, scale=down, fold=f)
        if mlp_bias:
            if arch.mlp_bias:
                add(f"{_MLP}.down_proj.bias", "center_vec" if centred else "copy", (src("down.b", i),), i,
                    scale=arch.residual_scale, fold=f)
            else:
                add(f"{_MLP}.down_proj.bias", "zeros", (), i)
        if arch.hidden_act == "xielu":
            for k in XIELU:
                add(f"{_MLP}.act_fn.{k}", "copy", (src(f"act.{k}", i),), i)
        for site, logical in (("input_layernorm", "ln1"), ("post_attention_layernorm", ln2)):
            target = f"model.layers.{{i}}.{site}.weight"
            if not arch.pre_norm:  # no source norm: a gain fitted so that Llama's norm passes the raw stream
                module = family.runtime.pre_inputs["ln1" if site == "input_layernorm" else "ln2"]
                fits.append(FitSite(target.format(i=i), "gain", i, module, identity=True))
                add(target, "fit_gain", (), i, src_t="(no norm in the source: fitted)")
                continue
            if norm == "fit":
                fits.append(FitSite(target.format(i=i), "gain", i, _norm_module(family, site)))
            _gain(add, target, src(f"{logical}.w", i) if arch.norm_weight else None, norm, i, arch.norm_offset)
    if norm == "fit":
        fits.append(FitSite("model.norm.weight", "gain", None, family.runtime.final_norm))
    _gain(add, "model.norm.weight", src("final.w") if arch.norm_weight else None, norm, None, arch.norm_offset)
    head = src("embed") if arch.tied else src("head.w")
    if not cfg["tie_word_embeddings"]:
        add("lm_head.weight", "unit_rows" if arch.head_norm else "copy", (head,), scale=arch.logit_scale)

    read = {n for step in steps.values() for n in step.sources}
    fit_reads = []
    for key, name in found.items():  # fold-site norms are read by the fit; the rest unread is dropped, with why
        logical = key.split("@")[0]
        if logical.split(".")[0] in FOLD_TENSORS.values():
            fit_reads.append(name)
            continue
        if name not in read:
            why = UNUSED_REASONS[logical.split(".")[0] if logical.startswith("ln") else logical]
            template = _template(family, name)
            dropped.append((name, why))
            dropped_table[(template, why)] = dropped_table.get((template, why), 0) + 1
    for site in arch.folds:
        label = family.tensors[f"{FOLD_TENSORS[site]}.w"][0]
        table[(label, "(fitted scale)", "fit")] = arch.num_layers
    missing = [t for t in target_shapes if t not in steps]
    if missing:
        raise MappingError(f"target tensor {missing[0]!r} is never written ({len(missing)} missing)")
    for t, step in steps.items():
        if step.op in ("copy", "gain", "center_rows", "center_out", "center_vec", "unit_rows") and step.rows is None:
            have = tuple(source_shapes[step.sources[0]])
            if have != step.shape:
                raise MappingError(f"target tensor {t!r} would have shape {have}, Llama expects {step.shape}")

    div = divergences(arch, norm=norm, mlp_target=mlp_target)
    offset = {"head": head, "beta": src("final.b") if arch.norm_bias else None,
              "bias": src("head.b") if arch.head_bias else None, "scale": arch.logit_scale}
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
        fits=fits,
        fit_reads=sorted(fit_reads),
    )


def _frozen_rows(arch: Arch, cfg: dict[str, Any]) -> tuple[float, ...] | None:
    """Partial rotary carried as Llama's longrope: Llama multiplies cos/sin by ``attention_factor`` on every
    channel, the frozen ones too, where the source passes its unrotated channels through unscaled. Dividing those
    q and k rows by the factor gives back the source's q.k (per head: 1 on rotated channels, 1 / factor else)."""
    rope = cfg["rope_parameters"]
    factor = rope.get("attention_factor", 1.0) if rope["rope_type"] == "longrope" else 1.0
    d, r = arch.head_dim, arch.rotary_dim
    if r == d or factor == 1.0:
        return None
    per_head = [1.0 if c % (d // 2) < r // 2 else 1.0 / factor for c in range(d)]
    return tuple(per_head * arch.num_heads)


def _fit(fits: list[FitSite], kind: str, site: str, i: int, family: Family, arch: Arch) -> str:
    """Register a fitted diagonal at ``site`` of layer ``i``; its key. A q/k norm acting after RoPE gets a scale
    equal on both channels of each rotated pair, which commutes with the rotation."""
    key = f"fold.{site}@{i}"
    pairs = (arch.head_dim, arch.rotary_dim) if arch.qk_norm_after_rope and site in ("q", "k") else None
    fits.append(FitSite(key, kind, i, family.runtime.fold_modules[site], pairs=pairs))
    return key


def _norm_module(family: Family, site: str) -> str:
    """The source LayerNorm module that a Llama norm site reads (for the fit)."""
    for module, sites in family.runtime.norm_sites.items():
        if site in sites:
            return module
    raise MappingError(f"the {family.name} runtime names no LayerNorm for {site}")  # pragma: no cover


def _gain(add: Any, target_t: str, gamma: str | None, norm: str, i: int | None, shift: float) -> None:
    if norm == "fit":
        add(target_t, "fit_gain", (gamma,), i)
    elif gamma is None:
        add(target_t, "ones", (), i, src_t="(weightless LayerNorm)")
    else:
        add(target_t, "gain", (gamma,), i, shift=shift)


def _template(family: Family, name: str) -> str:
    """The family template a concrete source name instantiates (for the mapping table)."""
    for templates in family.tensors.values():
        for t in templates:
            if _regex(t).match(name):
                return t
    return name
