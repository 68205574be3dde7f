"""The calibration pass: closed-form refits of a converted Llama, layer by layer, against the source teacher.

Two uses, one pass (:func:`calibrate`, on :func:`kept.convert.stream.walk`):

* the MHA -> GQA graft (``kv_heads``, ``kv_init``): each layer's KV heads are merged (:mod:`kept.convert.graft`,
  from the second moments of the attention input) and, for ``fit``, o_proj is refitted by least squares so that the
  grafted attention's output matches the teacher's attention output;
* the layer fit (``layer_fit``, ``kept convert --layer-fit``), for modules stock Llama cannot hold: where the source
  normalises q and k per head (dropped by the conversion), q_proj and k_proj refitted to the teacher's normalised q
  and k; o_proj refitted as above; where the source block is parallel (GPT-NeoX, Phi), gate/up refitted so that the
  MLP, which now reads the stream after attention, sees what it saw in the teacher (its pre-activations from the
  block's input); and down_proj refitted so that the layer's output matches the teacher's layer output (absorbing
  GELU -> SiLU and what the earlier refits left).

Every refit is ridge least squares towards the converted weights, ``min ||F W^T - Y||^2 + lam ||W - W0||^2`` with
``lam = ridge * mean(diag(F^T F))``, from normal equations accumulated over the calibration batches (features F: the
inputs of the refitted linear map in the student, on the student's own stream; targets Y: the teacher's, centred
when the mapping centres the stream). Layers are solved in order, each on the outputs of the student layers solved
before it (GPTQ's sequential reconstruction). Peak memory: one layer of each model, the two streams, the teacher's
attention outputs and the normal equations of the widest refit.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from kept.convert.families import Arch, Family
from kept.convert.graft import Attention, Merge, check_kv_heads, graft_attention
from kept.convert.stream import Stream, StreamingModel, set_params, tokens_first, untangle_heads, walk
from kept.errors import CheckpointError, ConfigError, MappingError
from kept.progress import Progress

log = logging.getLogger(__name__)

RIDGE = 1e-3  # relative ridge of every refit (towards the converted weights)
EIG_RIDGE = 1e-9  # relative ridge of the moments the NoPE basis factorises (and floor of its scales)
FINAL_FIT_TOKENS = 4096  # calibration tokens the final softcap's temperature is fitted on ...
FINAL_FIT_CHUNK = 64  # ... this many at a time against the whole vocabulary
FINAL_FIT_ITERATIONS = 30  # Newton steps at most
TEXT_SEQ_LEN = 1024  # calibration text (plain or jsonl) is cut into sequences of this many tokens at most
_ATTN = "self_attn"


# ---- calibration text ----------------------------------------------------------------------------------------


def calibration_ids(
    spec: str | Path | None, *, tokenizer: Path, bos: int | None, eos: int | None, n_tokens: int,
    max_len: int, from_end: bool = False,
) -> tuple[torch.Tensor, str]:
    """``[B, T]`` token ids and what they are: from a packed corpus directory (manifest.json + shards), a JSON-lines
    corpus (``{"text": ...}`` per line, documents joined with EOS) or a plain text file, tokenized with the source's
    tokenizer and cut into sequences of ``min(max_len, TEXT_SEQ_LEN)`` tokens; None: the built-in multilingual
    sample. ``n_tokens``: whole sequences are taken until that many are collected (``from_end``: from the end, so
    a fitting batch and a fidelity batch do not overlap)."""
    from kept.fidelity import builtin_tokens, calibration_tokens

    if spec is None:
        return builtin_tokens(tokenizer, bos=bos), "built-in multilingual sample"
    path = Path(spec)
    if path.is_dir():
        return calibration_tokens(path, n_tokens=n_tokens, from_end=from_end), f"{path} (packed corpus)"
    if not path.is_file():
        raise ConfigError(f"{path}: calibration text not found (a packed corpus directory, a .jsonl corpus with "
                          "a 'text' field per line, or a plain text file)")
    if path.suffix == ".jsonl":
        from kept.jsonl import read_jsonl

        rows = read_jsonl(path, what="calibration documents")
        docs = []
        for n, row in enumerate(rows, start=1):
            if not isinstance(row.get("text"), str):
                raise ConfigError(f"{path}: record {n} has no string field 'text'")
            docs.append(row["text"])
        kind = "jsonl corpus"
    else:
        try:
            docs = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: calibration text is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        kind = "plain text"
    encode = _encoder(tokenizer)
    stream = [bos] if bos is not None else []
    for doc in docs:
        stream += encode(doc) + ([eos] if eos is not None else [])
    seq = max(1, min(max_len, TEXT_SEQ_LEN))
    rows_ = [stream[i : i + seq] for i in range(0, len(stream) - seq + 1, seq)] or [stream]
    if from_end:
        rows_ = rows_[::-1]
    take = max(1, math.ceil(n_tokens / len(rows_[0])))
    rows_ = rows_[:take]
    if from_end:
        rows_ = rows_[::-1]
    if not rows_[0]:
        raise ConfigError(f"{path}: calibration text holds no tokens")
    return torch.tensor(rows_, dtype=torch.long), f"{path} ({kind})"


def _encoder(tokenizer: Path) -> Callable[[str], list[int]]:
    """The source tokenizer's ``text -> ids`` (SentencePiece ``tokenizer.model`` or a tokenizers ``tokenizer.json``),
    without special tokens."""
    if Path(tokenizer).suffix == ".json":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    return lambda text: sp.encode(text)


def check_refit(ids: torch.Tensor, *, exactness: str, hidden_size: int, kv_heads: int | None, kv_init: str,
                layer_fit: bool, fit_tokens: int, where: tuple[str, str]) -> None:
    """Refuse a layer fit with nothing to fit (an exact conversion, no graft), and calibration text shorter than the
    attention input's moments have dimensions (``hidden_size + 1`` with the bias, so ``E[x x^T]`` can have full
    rank) where an init reads it. ``where``: (the source's config.json, the calibration text)."""
    from kept.convert.plan import APPROX

    if layer_fit and kv_heads is None and exactness != APPROX:
        raise MappingError(f"{where[0]}: --layer-fit refits what stock Llama cannot hold, but this conversion is "
                           f"{exactness}: there is nothing to fit (use it with an approximate mapping, or with "
                           "--kv-heads)")
    need = hidden_size + 1 if layer_fit or kv_init != "mean" else 1
    if ids.numel() < need:
        what = " and ".join(([f"--kv-init {kv_init}"] if kv_heads is not None and kv_init != "mean" else [])
                            + (["--layer-fit"] if layer_fit else []))
        raise ConfigError(f"{where[1]}: {ids.numel()} calibration tokens, but {what} needs at least {need} "
                          f"(hidden_size + 1); pass --calibration with more text"
                          f"{' or raise --fit-tokens' if fit_tokens < need else ''}")


# ---- ridge least squares ----------------------------------------------------------------------------------------


class _Normal:
    """Normal equations of ``F W^T ~ Y`` accumulated over batches (float64): ``F^T F``, ``F^T Y``, ``Y^T Y``."""

    def __init__(self) -> None:
        self.ftf: torch.Tensor | None = None
        self.fty: torch.Tensor | None = None
        self.yty = 0.0

    def add(self, f: torch.Tensor, y: torch.Tensor, *, bias: bool, rows: int = 1024) -> None:
        f = f.reshape(-1, f.shape[-1])  # (n, p)
        y = y.reshape(-1, y.shape[-1])  # (n, out)
        for r in range(0, f.shape[0], rows):  # float64 copies of a row block at a time
            fb, yb = f[r : r + rows].double(), y[r : r + rows].double()
            if bias:
                fb = torch.cat([fb, torch.ones(fb.shape[0], 1, dtype=fb.dtype, device=fb.device)], 1)
            if self.ftf is None:
                self.ftf = torch.zeros(fb.shape[1], fb.shape[1], dtype=fb.dtype, device=fb.device)
                self.fty = torch.zeros(fb.shape[1], yb.shape[1], dtype=fb.dtype, device=fb.device)
            self.ftf.addmm_(fb.T, fb)
            self.fty.addmm_(fb.T, yb)
            self.yty += float((yb * yb).sum())

    def error(self, wt: torch.Tensor) -> float:
        """Relative squared error ``||F W^T - Y||^2 / ||Y||^2`` of ``wt`` = W^T."""
        sq = float((wt * (self.ftf @ wt)).sum() - 2 * (wt * self.fty).sum()) + self.yty
        return max(sq, 0.0) / max(self.yty, 1e-300)

    def solve(self, w0t: torch.Tensor, ridge: float) -> torch.Tensor:
        """``W^T`` minimising the squared error plus ``lam ||W - W0||^2``: a Cholesky solve of ``(F^T F + lam I)``,
        the ridge added in place and taken off again (one extra ``p x p`` matrix, the factor: 1.9 GB at Orion-14B's
        MLP width, where a general solve would copy the matrix and factor it too)."""
        lam = ridge * float(torch.diagonal(self.ftf).mean())
        self.ftf.diagonal().add_(lam)
        try:
            factor, info = torch.linalg.cholesky_ex(self.ftf)
        finally:
            self.ftf.diagonal().sub_(lam)
        rhs = torch.add(self.fty, w0t, alpha=lam)
        if int(info):  # not positive definite (lam = 0: features that are all zero): least squares with no ridge
            return torch.linalg.lstsq(self.ftf, rhs).solution
        return torch.cholesky_solve(rhs, factor)


def _weight_t(params: dict[str, torch.Tensor], name: str, *, bias: bool) -> torch.Tensor:
    """``[W | b]^T`` of a linear layer in ``params`` (float64)."""
    w = params[f"{name}.weight"].double()
    return torch.cat([w, params[f"{name}.bias"].double()[:, None]], 1).T if bias else w.T


def _set_weight_t(params: dict[str, torch.Tensor], name: str, wt: torch.Tensor, *, bias: bool,
                  centre: bool) -> None:
    w = wt.T
    if centre:  # a map into the centred stream stays centred (its target is; this removes rounding drift)
        w = w - w.mean(0, keepdim=True)
    params[f"{name}.weight"] = w[:, :-1] if bias else w
    if bias:
        params[f"{name}.bias"] = w[:, -1]


# ---- the pass ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sites:
    """Where the calibration pass reads the teacher, in its own decoder layer (module paths inside the layer), from
    the family's data: what its attention adds to the stream (the attention module's output, or the norm after it
    that a fitted scale replaced, :attr:`Arch.folds` ``o``; times ``attn_scale``, Granite's residual multiplier), the
    per-head q/k norms the conversion dropped or replaced by fitted scales (whose outputs q_proj and k_proj are
    refitted to, in Llama's channel order and scale: :func:`kept.convert.plan.qk_channels`), and whether the block is
    parallel (its MLP read the block's input)."""

    attention: str
    attn_scale: float = 1.0
    qk: tuple[str, str] | None = None
    qk_rows: tuple[int, ...] = ()
    q_factor: tuple[float, ...] = ()
    k_factor: tuple[float, ...] = ()
    parallel: bool = False
    qk_rotated: bool = False  # the q/k norms act after RoPE (HunYuan): their outputs are rotated back to targets
    nope_layers: tuple[int, ...] = ()  # layers the source runs without RoPE: q/k put in a RoPE-tolerant basis


def teacher_sites(family: Family, arch: Arch, llama_cfg: dict[str, Any]) -> Sites:
    """The :class:`Sites` of a source family: the attention module is the parent of its output projection
    (``o.w``); q/k norms are the fold modules of its runtime (Qwen3, OLMo-2, Gemma 3, ...) or the dropped per-head
    LayerNorms (``qk_layernorm``: StableLM, Phi, Persimmon, Cohere's ``use_qk_norm``)."""
    from kept.convert.plan import QK_NORM, qk_channels

    rt = family.runtime

    def runtime_path(template: str) -> str:  # a stored tensor name -> its module path inside runtime layer 0
        name = template.format(i=0, h=0)
        for rx, repl in rt.renames:
            name = re.sub(rx, repl, name)
        prefix = rt.layer_prefix.format(i=0)
        if not name.startswith(prefix):
            raise MappingError(f"{family.name}: tensor {name!r} is not inside the runtime's layer {prefix!r}")
        return name[len(prefix):]

    attention = runtime_path(family.tensors["o.w"][0]).rsplit(".", 2)[0]
    o_fold = rt.fold_modules.get("o") if "o" in arch.folds else None
    qk = None
    if "q" in arch.folds and "k" in arch.folds:
        qk = (rt.fold_modules["q"], rt.fold_modules["k"])
    elif arch.qk_layernorm:
        paths = {}
        for template in filter(QK_NORM.search, family.dropped):
            path = runtime_path(template)
            m = QK_NORM.search(path)
            paths[m.group(1)] = path[: m.end()]
        qk = (paths["q"], paths["k"])
    rows, qf, kf = qk_channels(arch, llama_cfg)
    return Sites(attention=o_fold or attention, attn_scale=arch.residual_scale, qk=qk, qk_rows=tuple(rows),
                 q_factor=tuple(qf), k_factor=tuple(kf), parallel=arch.parallel_residual,
                 qk_rotated=qk is not None and arch.qk_norm_after_rope, nope_layers=arch.nope_layers)


def calibrate(
    *,
    teacher: Path,
    student: Path,
    ids: torch.Tensor,
    kv_heads: int | None,
    kv_init: str,
    layer_fit: bool,
    centred: bool,
    sites: Sites,
    scratch: Path,
    where: str,
    ridge: float = RIDGE,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Solve every layer of the converted Llama at ``student`` against ``teacher`` on ``ids`` and save the tensors it
    replaces, per layer, as ``scratch/layer-<i>.safetensors`` (with ``layer_fit`` on a source that softcaps its
    logits, lm_head times the fitted temperature as ``scratch/head.safetensors``). ``sites``: where the teacher's
    layer is read (:func:`teacher_sites`); ``centred``: the mapping centres the stream (the targets are centred too).
    Returns the grafted Llama config.json and the report (per layer: the groups of KV heads, the merge's residuals,
    each refit's relative error before/after, and the layer's wall seconds; ``final_softcap``: the temperature and
    the KL before/after)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from kept.convert.plan import LEGACY_KEYS
    from kept.fidelity import split_batches

    cfg = json.loads((student / "config.json").read_text())
    heads, kv_now = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if kv_heads is not None:
        check_kv_heads(kv_heads, heads=heads, current=kv_now, where=where)
        cfg = {**cfg, "num_key_value_heads": kv_heads}
    attn_bias, mlp_bias = bool(cfg.get("attention_bias")), bool(cfg.get("mlp_bias"))
    qk = sites.qk if layer_fit else None
    scratch.mkdir(parents=True, exist_ok=True)
    t_model = StreamingModel(teacher, device=device)
    s_model = StreamingModel(student, device=device)
    if kv_heads is not None:  # the grafted layer: Llama's with G KV heads, its weights set per layer
        llama_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k not in LEGACY_KEYS})
        llama_cfg._attn_implementation = s_model.config._attn_implementation
        with torch.device("meta"):
            grafted = LlamaDecoderLayer(llama_cfg, layer_idx=0).eval()
    layers: list[dict[str, Any]] = []
    final: dict[str, float] | None = None
    bar = Progress(t_model.num_layers, desc="convert: calibration", unit="layer")
    try:
        batches = split_batches(ids)
        if qk is not None:  # per-head tensors: a sequence as long as a head count would make their layout ambiguous
            batches = untangle_heads(batches, heads, kv_now)
        t_stream = Stream(t_model, batches, who=f"teacher {teacher}")
        s_stream = Stream(s_model, batches, who="converted student (calibration pass)")
        seq = batches[0].shape[1]
        attn_t: list[torch.Tensor] = []  # what the teacher's attention added to the stream, per batch
        qk_t: dict[str, list[torch.Tensor]] = {"q": [], "k": []}  # the teacher's normalised q and k
        started: list[float] = []

        def taps(i: int, layer: torch.nn.Module) -> list[Any]:
            started.append(time.perf_counter())
            attn_t.clear()
            qk_t["q"].clear()
            qk_t["k"].clear()
            hooks = [layer.get_submodule(sites.attention).register_forward_hook(
                lambda m, a, out: attn_t.append(_first(out) * sites.attn_scale))]
            for key, path in zip("qk", qk or ()):
                hooks.append(layer.get_submodule(path).register_forward_hook(
                    lambda m, a, out, key=key: qk_t[key].append(tokens_first(_first(out), seq))))
            return hooks

        def after(i: int) -> None:  # the layer's wall time: both forwards, the moments, the merge and the refits
            layers[i]["seconds"] = round(time.perf_counter() - started[i], 3)

        centre = (lambda t: t - t.mean(-1, keepdim=True)) if centred else (lambda t: t)

        @torch.no_grad()
        def solve(i: int, layer: torch.nn.Module) -> torch.nn.Module:
            params = {k: p.detach() for k, p in layer.named_parameters()}  # each refit replaces entries
            init = dict(params)
            x = [layer.input_layernorm(h) for h in s_stream.hidden]  # the attention's input on the student's stream
            ctx = s_stream.inputs(i)
            record: dict[str, Any] = {"layer": i}
            if qk is not None:  # before any merge: q and k to what the teacher's q/k norms gave
                record.update(_Fit(layer, params, ctx=ctx, ridge=ridge, centred=centred, device=s_model.device).qk(
                    x, qk_t, sites=sites, heads=(heads, kv_now), bias=attn_bias))
            nope = layer_fit and i in sites.nope_layers
            sigma = _moment(x) if nope or kv_heads is not None else None  # E[x x^T] of the attention's input
            if nope:  # before any merge, after the q/k refit
                record["nope_basis"] = _nope_basis(params, sigma, x, ctx, heads=(heads, kv_now), head_dim=hd,
                                                   bias=attn_bias)
                set_params(layer, params, s_model.device)
            if kv_heads is not None:
                merge = graft_attention(_attention(params, heads=heads, kv_heads=kv_now, head_dim=hd, bias=attn_bias),
                                        kv_heads=kv_heads, init=kv_init, sigma=sigma)
                _set_attention(params, merge, bias=attn_bias)
                record.update(groups=merge.groups, residual=merge.residual)
            out = set_params(grafted if kv_heads is not None else layer, params, s_model.device)
            fit = _Fit(out, params, ctx=ctx, ridge=ridge, centred=centred, device=s_model.device)
            if layer_fit or kv_heads is not None and kv_init == "fit":
                record["o_proj"] = fit.o_proj(x, [centre(y) for y in attn_t], bias=attn_bias)
            if layer_fit:
                record.update(fit.mlp(s_stream.hidden, x, [centre(t) for t in t_stream.hidden],
                                      parallel=sites.parallel, bias=mlp_bias))
            changed = {f"model.layers.{i}.{k}": v.float().cpu().contiguous() for k, v in params.items()
                       if v is not init[k]}
            for name, t in changed.items():
                if not bool(torch.isfinite(t).all()):
                    raise CheckpointError(f"{where}: the calibration fit of layer {i} gives {name!r} a NaN or Inf "
                                          "(calibration text too uniform or too short for this layer?)")
            save_file(changed, str(scratch / f"layer-{i}.safetensors"))
            layers.append(record)
            bar.set_postfix(layer=i, **{k: f"{v['after']:.3g}" for k, v in record.items()
                                        if isinstance(v, dict) and "after" in v})
            bar.update(1)
            return out

        walk(t_stream, s_stream, taps=taps, solve=solve, after=after)
        cap = getattr(t_model.config, "final_logit_softcapping", None)
        if layer_fit and cap:  # the softcap Llama's logits cannot hold: a temperature folded into lm_head
            head = s_model.head_rows(0, s_model.vocab_size()).clone()
            final = _final_temperature(t_model, s_model, head, t_stream.hidden, s_stream.hidden)
            save_file({"lm_head.weight": (head.cpu() * final["temperature"]).contiguous()},
                      str(scratch / "head.safetensors"))
            cfg = {**cfg, "tie_word_embeddings": False}
    finally:
        t_model.close()
        s_model.close()
        bar.close()
    report = {"n_tokens": int(sum(b.numel() for b in batches)), "ridge": ridge, "layers": layers}
    if final is not None:
        report["final_softcap"] = final
    return cfg, report


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, T, heads, hd)`` from a q/k norm's output with the tokens on axis 1 (:func:`tokens_first`):
    ``(B, T, heads, hd)`` or ``(B, T, heads * hd)``."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1)


@torch.no_grad()
def _final_temperature(teacher: StreamingModel, student: StreamingModel, w_s: torch.Tensor,
                       t_hidden: list[torch.Tensor], s_hidden: list[torch.Tensor]) -> dict[str, float]:
    """The teacher softcaps its logits (``c tanh(z / c)``: Gemma 2, VaultGemma), which Llama cannot: the temperature
    ``tau`` of the student's logits that minimises KL(teacher || softmax(tau z)) over the calibration tokens (at most
    FINAL_FIT_TOKENS), by Newton's method on this convex 1-D problem (gradient ``E[E_q z - E_p z]``, curvature
    ``E[Var_q z]``). ``w_s``: the student's LM head (float32); the teacher's is held beside it (2 x vocab x hidden x
    4 bytes)."""
    def tokens(model: StreamingModel, hidden: list[torch.Tensor]) -> torch.Tensor:
        h = torch.cat([model.final_norm(hb).reshape(-1, hb.shape[-1]) for hb in hidden])
        return h[:FINAL_FIT_TOKENS].float()

    w_t = teacher.head_rows(0, teacher.vocab_size()).clone()
    bias = teacher.head_bias_rows(0, teacher.vocab_size())
    h_t, h_s = tokens(teacher, t_hidden), tokens(student, s_hidden)

    def chunks():
        for a in range(0, h_t.shape[0], FINAL_FIT_CHUNK):
            zt = (h_t[a:a + FINAL_FIT_CHUNK] @ w_t.T).double()
            lp = torch.log_softmax(teacher.logits(zt if bias is None else zt + bias), -1)
            yield lp, (h_s[a:a + FINAL_FIT_CHUNK] @ w_s.T).double()

    def step(tau: float) -> tuple[float, float, float]:  # KL, gradient, curvature (means over tokens)
        kl = grad = curv = 0.0
        for lp, zs in chunks():
            lq = torch.log_softmax(tau * zs, -1)
            p, q = lp.exp(), lq.exp()
            eq = (q * zs).sum(-1)
            kl += float((p * (lp - lq)).sum())
            grad += float((eq - (p * zs).sum(-1)).sum())
            curv += float(((q * zs * zs).sum(-1) - eq * eq).sum())
        n = h_t.shape[0]
        return kl / n, grad / n, curv / n

    tau = 1.0
    before, grad, curv = step(tau)
    kl = before
    for _ in range(FINAL_FIT_ITERATIONS):
        new = min(max(tau - grad / max(curv, 1e-12), 0.05), 20.0)
        done = abs(new - tau) < 1e-7
        tau = new
        kl, grad, curv = step(tau)
        if done:
            break
    if not math.isfinite(kl) or kl > before:  # a safeguard: the converted head when Newton found nothing better
        tau, kl = 1.0, before
    return {"before": before, "after": kl, "temperature": tau, "tokens": int(h_t.shape[0])}


def _nope_basis(params: dict[str, torch.Tensor], sigma: torch.Tensor, x: list[torch.Tensor],
                ctx: list[tuple[tuple, dict]], *, heads: tuple[int, int], head_dim: int,
                bias: bool) -> dict[str, float]:
    """A layer the source runs without RoPE, which Llama rotates: q and k of each KV group put in the *balanced*
    basis of the score ``q . k`` (``q' = T q``, ``k' = T^-T k``, so ``q' . k' = q . k`` exactly at zero rotation),
    its coordinates ordered by their share of the score and laid on the RoPE pairs from the slowest: what the
    rotation then disturbs is the least of the score. ``T`` from the calibration moments: with ``P = sum_h
    E[q_h q_h^T]`` over the group's query heads ``= L L^T`` and ``Q = E[k k^T]``, ``L^T Q L = U S^2 U^T`` and ``T =
    S^(1/2) U^T L^-1``, which makes both moments ``S`` (balanced truncation's basis, whose coordinate ``j`` carries
    ``s_j^2`` of the score's energy). The pairs' speeds are the student's own (its position embeddings at positions
    0 and 1); ``sigma``: ``E[[x, 1][x, 1]^T]`` of the attention's input ``x`` (:func:`_moment`). Records the score's
    relative error under Llama's rotation on the first calibration sequence, before and after."""
    n_heads, n_kv = heads
    hd, g = head_dim, n_heads // n_kv
    att = _attention(params, heads=n_heads, kv_heads=n_kv, head_dim=hd, bias=bias)
    cos, sin = ctx[0][1]["position_embeddings"]
    speed = torch.remainder(torch.atan2(sin[0, 1], cos[0, 1]) - torch.atan2(sin[0, 0], cos[0, 0]),
                            2 * math.pi).double().cpu()
    half = hd // 2
    slots = [c for p in sorted(range(half), key=lambda p: float(speed[p])) for c in (p, p + half)]
    q, k = att.q.clone(), att.k.clone()
    for j in range(n_kv):
        rows_k = slice(j * hd, (j + 1) * hd)
        group = [slice(h * hd, (h + 1) * hd) for h in range(j * g, (j + 1) * g)]
        pq = sum(att.q[r] @ sigma @ att.q[r].T for r in group)
        pk = att.k[rows_k] @ sigma @ att.k[rows_k].T
        eye = torch.eye(hd, dtype=pq.dtype)
        pq, pk = (m + EIG_RIDGE * float(m.diagonal().mean()) * eye for m in (pq, pk))
        chol = torch.linalg.cholesky(pq)
        s2, u = torch.linalg.eigh(chol.T @ pk @ chol)
        s2, u = s2.flip(0).clamp_min(0), u.flip(1)  # descending: the largest share of the score first
        root = s2.sqrt().clamp_min(EIG_RIDGE).sqrt()
        t_q = root[:, None] * torch.linalg.solve_triangular(chol.T, u, upper=True).T  # S^(1/2) U^T L^-1
        t_k = (u / root).T @ chol.T  # T^-T = S^(-1/2) U^T L^T
        order = torch.empty(hd, dtype=torch.long)
        order[torch.tensor(slots)] = torch.arange(hd)  # balanced coordinate r -> channel slots[r]
        k[rows_k] = (t_k @ att.k[rows_k])[order]
        for r in group:
            q[r] = (t_q @ att.q[r])[order]
    first = (x[0][:1], tuple(p[:1] for p in ctx[0][1]["position_embeddings"]))  # one sequence: (H, T, T) scores
    before = _rotated_score_error(att.q, att.k, *first, heads=heads, head_dim=hd)
    after = _rotated_score_error(q, k, *first, heads=heads, head_dim=hd)
    dtype = params[f"{_ATTN}.q_proj.weight"].dtype
    for name, rows in (("q_proj", q), ("k_proj", k)):
        params[f"{_ATTN}.{name}.weight"] = rows[:, :-1].to(dtype)
        if bias:
            params[f"{_ATTN}.{name}.bias"] = rows[:, -1].to(dtype)
    return {"before": before, "after": after}


def _rotated_score_error(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, position_embeddings: Any, *,
                         heads: tuple[int, int], head_dim: int) -> float:
    """Relative error of the causal attention scores of ``x`` ``(B, T, d)`` under Llama's RoPE against the same q
    and k (rows ``[W | b]``) unrotated, over all heads."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    xa = torch.cat([x.double().cpu(), torch.ones(*x.shape[:2], 1, dtype=torch.float64)], -1)
    b, t = x.shape[:2]
    qs = (xa @ q.T).view(b, t, heads[0], head_dim).transpose(1, 2)
    ks = (xa @ k.T).view(b, t, heads[1], head_dim).transpose(1, 2).repeat_interleave(heads[0] // heads[1], 1)
    cos, sin = (p.double().cpu() for p in position_embeddings)
    qr, kr = apply_rotary_pos_emb(qs, ks, cos, sin)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    plain, rotated = (a @ c.transpose(-1, -2) for a, c in ((qs, ks), (qr, kr)))
    return float((rotated - plain)[..., causal].norm() / plain[..., causal].norm())


def _unrotate(t: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Llama's RoPE undone on ``t`` ``(B, T, heads, hd)`` in Llama's channel order: the rotation by the negative
    angle, with the student's own ``(cos, sin)`` ``(B, T, hd)``, so that the student's RoPE of the result is ``t``."""
    from transformers.models.llama.modeling_llama import rotate_half

    cos, sin = (p.to(t.dtype)[:, :, None, :] for p in position_embeddings)
    return t * cos - rotate_half(t) * sin


def _moment(x: list[torch.Tensor]) -> torch.Tensor:
    """``E[[x, 1][x, 1]^T]`` over all tokens of all batches, float64 ``(d+1, d+1)``."""
    total, n = None, 0
    for xb in x:
        xa = xb.reshape(-1, xb.shape[-1]).double()
        xa = torch.cat([xa, torch.ones(xa.shape[0], 1, dtype=xa.dtype, device=xa.device)], 1)
        s = xa.T @ xa
        total, n = (s if total is None else total + s), n + xa.shape[0]
    return (total / n).cpu()


def _attention(params: dict[str, torch.Tensor], *, heads: int, kv_heads: int, head_dim: int,
               bias: bool) -> Attention:
    """A layer's attention tensors as :class:`kept.convert.graft.Attention` (float64, rows ``[W | b]``)."""
    def aug(name: str) -> torch.Tensor:
        w = params[f"{_ATTN}.{name}.weight"].double().cpu()
        b = params[f"{_ATTN}.{name}.bias"].double().cpu() if bias else torch.zeros(w.shape[0], dtype=w.dtype)
        return torch.cat([w, b[:, None]], 1)

    return Attention(q=aug("q_proj"), k=aug("k_proj"), v=aug("v_proj"),
                     o=params[f"{_ATTN}.o_proj.weight"].double().cpu(), heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim)


def _set_attention(params: dict[str, torch.Tensor], merge: Merge, *, bias: bool) -> None:
    for name, rows in (("q_proj", merge.q), ("k_proj", merge.k), ("v_proj", merge.v)):
        params[f"{_ATTN}.{name}.weight"] = rows[:, :-1]
        if bias:
            params[f"{_ATTN}.{name}.bias"] = rows[:, -1]
    params[f"{_ATTN}.o_proj.weight"] = merge.o


class _Fit:
    """The refits of one student layer ``out`` (a Llama decoder layer holding ``params``), each ridge least squares
    from normal equations over the calibration batches, written into ``params`` and set in ``out``. ``ctx``: what
    the layer receives besides the stream, per batch (masks, position embeddings)."""

    def __init__(self, out: torch.nn.Module, params: dict[str, torch.Tensor], *, ctx: list[tuple[tuple, dict]],
                 ridge: float, centred: bool, device: torch.device) -> None:
        self.out, self.params, self.ctx, self.ridge, self.centred = out, params, ctx, ridge, centred
        self.device = device

    def attention(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.out.self_attn(hidden_states=xb, attention_mask=kw.get("attention_mask"),
                                   position_embeddings=kw["position_embeddings"])[0]
                for xb, (_, kw) in zip(x, self.ctx)]

    def _solve(self, name: str, pairs: Any, *, bias: bool, centre: bool) -> dict[str, float]:
        normal = _Normal()
        for f, y in pairs:
            normal.add(f, y, bias=bias)
        w0t = _weight_t(self.params, name, bias=bias).to(normal.ftf.device)  # a merged o_proj sits on the CPU
        wt = normal.solve(w0t, self.ridge)
        _set_weight_t(self.params, name, wt, bias=bias, centre=centre)
        set_params(self.out, self.params, self.device)
        return {"before": normal.error(w0t), "after": normal.error(wt)}

    def qk(self, x: list[torch.Tensor], captured: dict[str, list[torch.Tensor]], *, sites: Sites,
           heads: tuple[int, int], bias: bool) -> dict[str, dict[str, float]]:
        """q_proj and k_proj from the attention's input ``x`` to the teacher's q and k after its q/k norms
        (``captured``: their outputs, tokens on axis 1), channels in Llama's order and scale."""
        record = {}
        rows = list(sites.qk_rows)
        for key, n, factor in zip(("q", "k"), heads, (sites.q_factor, sites.k_factor)):
            scale = torch.tensor(factor, dtype=torch.float32, device=self.device)
            target = [_per_head(t, n)[..., rows] * scale for t in captured[key]]
            if sites.qk_rotated:  # Llama rotates what q_proj gives: the target is the norm's output rotated back
                target = [_unrotate(t, kw["position_embeddings"]) for t, (_, kw) in zip(target, self.ctx)]
            target = [t.flatten(-2) for t in target]
            record[f"{key}_proj"] = self._solve(f"{_ATTN}.{key}_proj", zip(x, target), bias=bias, centre=False)
        return record

    def o_proj(self, x: list[torch.Tensor], target: list[torch.Tensor], *, bias: bool) -> dict[str, float]:
        """o_proj from the heads' outputs to ``target`` (the teacher's attention output)."""
        feats = _inputs_of(self.out.self_attn.o_proj, lambda: self.attention(x))
        return self._solve(f"{_ATTN}.o_proj", zip(feats, target), bias=bias, centre=self.centred)

    def mlp(self, h: list[torch.Tensor], x: list[torch.Tensor], target: list[torch.Tensor], *, parallel: bool,
            bias: bool) -> dict[str, dict[str, float]]:
        """gate/up (``parallel``: to the pre-activations from the block's input ``h``, which the teacher's MLP read)
        and down_proj (to ``target``, the teacher's layer output, minus the stream after attention)."""
        mlp, norm = self.out.mlp, self.out.post_attention_layernorm
        h_mid = [hb + a for hb, a in zip(h, self.attention(x))]
        m = [norm(hb) for hb in h_mid]
        record = {}
        if parallel:
            m_in = [norm(hb) for hb in h]
            for name in ("gate_proj", "up_proj"):
                lin = getattr(mlp, name)
                record[name] = self._solve(f"mlp.{name}", ((a, lin(b)) for a, b in zip(m, m_in)), bias=bias,
                                           centre=False)
        feats = _inputs_of(mlp.down_proj, lambda: [mlp(a) for a in m])
        record["down_proj"] = self._solve("mlp.down_proj", ((f, t - hb) for f, t, hb in zip(feats, target, h_mid)),
                                          bias=bias, centre=self.centred)
        return record


def _inputs_of(module: torch.nn.Module, run: Callable[[], Any]) -> list[torch.Tensor]:
    """What ``module`` receives, per call, while ``run()`` runs."""
    got: list[torch.Tensor] = []
    hook = module.register_forward_pre_hook(lambda m, args: got.append(args[0]))
    try:
        run()
    finally:
        hook.remove()
    return got


# ---- the output ---------------------------------------------------------------------------------------------------


class _Refitted:
    """The tensors a calibration pass replaced (``scratch/layer-*.safetensors``, ``scratch/head.safetensors``), read
    one at a time on demand."""

    def __init__(self, scratch: Path) -> None:
        from safetensors import safe_open

        self._open = safe_open
        self.where = {name: f for f in sorted(scratch.glob("*.safetensors"))
                      for name in safe_open(str(f), framework="pt").keys()}

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def __getitem__(self, name: str) -> torch.Tensor:
        with self._open(str(self.where[name]), framework="pt") as fh:
            return fh.get_tensor(name)


def write_refitted(*, stage: Path, scratch: Path, config: dict[str, Any], out_dir: Path, out_dtype: torch.dtype,
                   max_shard_size: int) -> None:
    """The final checkpoint in ``out_dir``: every tensor of the converted Llama at ``stage`` copied as stored, except
    those the calibration pass replaced (``scratch``), at the shapes of ``config`` (the grafted config.json)."""
    from kept.checkpoint import TensorReader
    from kept.convert.plan import Plan, Step, llama_shapes
    from kept.convert.writer import write_weights

    refitted = _Refitted(scratch)
    steps = [Step(name, "given" if name in refitted else "copy", () if name in refitted else (name,), shape, name)
             for name, shape in llama_shapes(config).items()]
    plan = Plan(norm="", family="llama", steps=steps, dropped=[], llama_config=config)
    with TensorReader(stage) as reader:
        write_weights(reader=reader, plan=plan, out_dir=out_dir, out_dtype=out_dtype, max_shard_size=max_shard_size,
                      gains=refitted)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def refit_checkpoint(*, teacher: Path, stage: Path, out_dir: Path, config: dict[str, Any], ids: torch.Tensor,
                     what: str, kv_heads: int | None, kv_init: str, layer_fit: bool, centred: bool, sites: Sites,
                     out_dtype: torch.dtype, max_shard_size: int, where: str,
                     device: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """The converted Llama written at ``stage`` (with its ``config``) -> the refitted checkpoint in ``out_dir``
    (:func:`calibrate`, then :func:`write_refitted`); ``stage`` and the scratch files are removed. Returns the
    output's config.json and conversion.json's ``calibration_fit`` (``what``: the calibration text)."""
    import shutil

    (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    scratch = out_dir / ".calibration-scratch"
    config, report = calibrate(teacher=teacher, student=stage, ids=ids, kv_heads=kv_heads, kv_init=kv_init,
                               layer_fit=layer_fit, centred=centred, sites=sites, scratch=scratch, where=where,
                               device=device)
    write_refitted(stage=stage, scratch=scratch, config=config, out_dir=out_dir, out_dtype=out_dtype,
                   max_shard_size=max_shard_size)
    shutil.rmtree(stage)
    shutil.rmtree(scratch)
    return config, {"calibration": what, **report}
