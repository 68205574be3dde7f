"""Run a checkpoint one decoder layer at a time from disk, with the classes of its own family, and fit on its
activations: the one layer loop of the fidelity report (:mod:`kept.fidelity`), the fits of norms stock Llama cannot
hold (:func:`fit_sites`) and the calibration pass of the closed-form refits (:mod:`kept.convert.calibrate`).

:class:`StreamingModel` builds the family's whole model as a skeleton (parameters on the meta device, buffers
real), records what the model's own forward hands each decoder layer -- the embedding output (with any scale the
family applies), masks (sliding windows), position embeddings (per layer type) -- by running that forward once with
the layers replaced by recorders, and then runs each layer with its weights read from the checkpoint's mapped pages
and released after it. Memory: one layer's weights, the hidden states, an LM-head block; no family-specific code.

:class:`Stream` is one model's residual stream over the calibration batches; :func:`walk` advances a teacher stream
(and a student stream) layer by layer, GPTQ's sequential loop::

    for i in layers:
        run teacher layer i (taps collect what the solve needs)
        load student layer i -> solve it from what was collected (calibration) -> run it -> next

so each student layer is solved on the outputs of the student layers already solved before it.

:func:`fit_sites` runs the source over calibration text and fits, per :class:`~kept.convert.plan.FitSite`, the
least-squares RMSNorm gain (Appendix A) or per-channel scale that replaces a norm stock Llama cannot hold.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from kept.checkpoint import TensorReader
from kept.errors import CheckpointError, ConfigError


class _Recorded(Exception):
    """Raised by the last layer's recorder: the model's forward has handed every layer its inputs."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``i`` during the recording pass: keeps the arguments the model passes it."""

    def __init__(self, i: int, last: bool, store: dict[int, tuple[tuple, dict]]) -> None:
        super().__init__()
        self.i, self.last, self.store = i, last, store

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.store[self.i] = (args, kwargs)
        if self.last:
            raise _Recorded
        h = args[0] if args else kwargs["hidden_states"]
        return h[0] if isinstance(h, tuple) else h


def _skeleton(config: Any, model_class: str | None) -> torch.nn.Module:
    """The family's model with parameters on the meta device and real buffers (RoPE tables, embedding scales)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        if model_class is not None:
            module, name = model_class.split(":")
            return getattr(importlib.import_module(module), name)(config).eval()
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=torch.float32).eval()


def _set(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter ``name`` (a dotted path inside ``module``) by ``value``."""
    owner, _, leaf = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    mod._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


def set_params(module: torch.nn.Module, params: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    """Replace every parameter of ``module`` by ``params``' entry of its name (float32 on ``device``): never written
    in place, so a layer whose weights are a checkpoint's mapped pages leaves the file alone."""
    for key, _ in list(module.named_parameters()):
        _set(module, key, params[key].to(device=device, dtype=torch.float32))
    return module


class StreamingModel:
    """A checkpoint of any supported family (a source, or a converted stock Llama), run layer by layer."""

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu") -> None:
        from kept.convert.families import read_source

        self.directory = Path(directory)
        self.device = torch.device(device)
        family, self.arch, raw = read_source(self.directory)
        self.kind = family.name
        self.config = family.teacher_config(raw, self.directory / "config.json")
        self.reader = TensorReader(self.directory)
        rt = family.runtime
        self.sites = rt.norm_sites
        self.prefix = rt.layer_prefix
        renames = [(re.compile(a), b) for a, b in rt.renames]
        self._source: dict[str, str] = {}  # runtime parameter name -> source tensor name
        for name in self.reader.names():
            runtime = name
            for rx, repl in renames:
                runtime = rx.sub(repl, runtime)
            self._source[runtime] = name
        model = _skeleton(self.config, rt.model_class)
        for mod in model.modules():  # buffers (RoPE tables, embedding scales) onto the device
            for key, buf in mod._buffers.items():
                if buf is not None and buf.device != self.device:
                    mod._buffers[key] = buf.to(self.device)
        self.model = model
        self.base = model.base_model
        self.layers = next(m for m in self.base.children()
                           if isinstance(m, torch.nn.ModuleList) and len(m) == self.arch.num_layers)
        self.num_layers = len(self.layers)
        self.final = model.get_submodule(rt.final_norm)
        self._final_loaded = False

        names = set(self.reader.names())

        def stored(logical: str) -> str:
            return next((t for t in family.tensors[logical] if t in names), family.tensors[logical][0])

        self.embed_name = stored("embed")
        self.head_name = self.embed_name if self.arch.tied else stored("head.w")
        self.head_bias = stored("head.b") if self.arch.head_bias else None
        self.norm_w = stored("final.w") if self.arch.norm_weight else None
        self.eps = self.arch.norm_eps

    # ---- weights ------------------------------------------------------------------------------------------

    def _mapped(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows of a tensor as the file's mapped pages (no copy), or read (a strided pickled view)."""
        info = self.reader.info(name)
        stop = (info.shape[0] if info.shape else 1) if stop is None else stop
        if not info.dense:
            return self.reader.get_rows(name, start, stop) if info.shape else self.reader.get(name)
        rows = self.reader.mapped_rows(name, start, stop)
        return rows if info.shape else rows.view(())

    def _load(self, module: torch.nn.Module, prefix: str) -> torch.nn.Module:
        """Fill ``module``'s parameters (runtime names under ``prefix``) from the checkpoint, float32 on the device."""
        for key, param in list(module.named_parameters()):
            name = prefix + key
            if name not in self._source:
                raise CheckpointError(f"{self.directory}: the {self.kind} runtime needs tensor {name!r}, which the "
                                      "checkpoint lacks")
            src = self._mapped(self._source[name])
            if tuple(src.shape) != tuple(param.shape):
                raise CheckpointError(f"{self.directory}: tensor {self._source[name]!r} has shape "
                                      f"{tuple(src.shape)}, expected {tuple(param.shape)}")
            _set(module, key, src.to(device=self.device, dtype=torch.float32))
        return module

    def load_layer(self, i: int) -> torch.nn.Module:
        """Decoder layer ``i`` with its weights (float32, on the device); :meth:`release_layer` frees them."""
        return self._load(self.layers[i], self.prefix.format(i=i))

    def release_layer(self, i: int) -> None:
        for key, param in list(self.layers[i].named_parameters()):
            _set(self.layers[i], key, torch.empty(param.shape, device="meta"))

    # ---- forward ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        """The stream entering layer 0 (float32; reads only the embedding rows of the ids present) and what the
        model's forward hands each layer besides it, for ``ids`` ``[B, T]``."""
        uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
        rows = torch.cat([self.reader.get_rows(self.embed_name, u, u + 1) for u in uniq.tolist()])
        embed = self.model.get_input_embeddings()
        weight, padding = embed.weight, getattr(embed, "padding_idx", None)
        embed.weight = torch.nn.Parameter(rows.to(device=self.device, dtype=torch.float32), requires_grad=False)
        if padding is not None:
            embed.padding_idx = None  # the rows are renumbered
        store: dict[int, tuple[tuple, dict]] = {}
        real = list(self.layers)
        for i in range(self.num_layers):
            self.layers[i] = _Recorder(i, i == self.num_layers - 1, store)
        try:
            self.base(input_ids=inverse.to(self.device), use_cache=False)
        except _Recorded:
            pass
        finally:
            for i, layer in enumerate(real):
                self.layers[i] = layer
            embed.weight = weight
            if padding is not None:
                embed.padding_idx = padding
        args, kwargs = store[0]
        h = args[0] if args else kwargs["hidden_states"]
        return h.float(), [(args[1:], {k: v for k, v in kw.items() if k != "hidden_states"})
                           for args, kw in (store[i] for i in range(self.num_layers))]

    @torch.no_grad()
    def run_layer(self, layer: torch.nn.Module, h: torch.Tensor, inputs: tuple[tuple, dict]) -> torch.Tensor:
        """Layer ``layer`` (loaded) on the stream ``h``, with what the model's forward hands it."""
        args, kwargs = inputs
        out = layer(h, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The family's own final norm (its module, its weights)."""
        if not self._final_loaded:
            self._load(self.final, self.config_prefix(self.final))
            self._final_loaded = True
        return self.final(h)

    def config_prefix(self, module: torch.nn.Module) -> str:
        for name, mod in self.model.named_modules():
            if mod is module:
                return name + "." if name else ""
        raise AssertionError("module not in the model")  # pragma: no cover

    # ---- the head -----------------------------------------------------------------------------------------

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        """LM-head rows ``start:stop`` (float32, on the device), normalised where the family normalises them."""
        rows = self._mapped(self.head_name, start, stop)
        if getattr(self, "_head", None) is None or self._head.shape[0] < rows.shape[0]:
            self._head = torch.empty(rows.shape, dtype=torch.float32, device=self.device)
        out = self._head[: rows.shape[0]]
        out.copy_(rows)
        if self.arch.head_norm:
            out.copy_(F.normalize(out.double(), dim=1))
        return out

    def head_bias_rows(self, start: int, stop: int) -> torch.Tensor | None:
        """LM-head bias ``start:stop`` (float64), or None."""
        if self.head_bias is None:
            return None
        return self.reader.get(self.head_bias)[start:stop].to(device=self.device, dtype=torch.float64)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """What the family does to ``h @ head.T (+ bias)`` (float64): its logit scale and final softcap."""
        if self.arch.logit_scale != 1.0:
            z = z * self.arch.logit_scale
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    def vocab_size(self) -> int:
        return self.reader.info(self.head_name).shape[0]

    def close(self) -> None:
        self.reader.close()


# ---- the layer loop --------------------------------------------------------------------------------------------


class Stream:
    """One model's residual stream over calibration batches (token ids ``[b, T]`` each): the stream entering layer
    0 and what the model's forward hands each layer (:meth:`StreamingModel.prepare`), then advanced one decoder
    layer at a time; it must stay finite (an error names the tensors)."""

    def __init__(self, model: StreamingModel, batches: list[torch.Tensor], *, who: str) -> None:
        self.model, self.who = model, who
        prepared = [model.prepare(b.to(model.device)) for b in batches]
        self.hidden = [h for h, _ in prepared]  # (b, T, d) each
        self.ctx = [ctx for _, ctx in prepared]  # per batch, per layer: (args, kwargs) besides the stream
        check_stream(who, self.hidden, model.embed_name)

    def inputs(self, i: int) -> list[tuple[tuple, dict]]:
        """What layer ``i`` receives besides the stream, per batch."""
        return [ctx[i] for ctx in self.ctx]

    def advance(self, layer: torch.nn.Module, i: int) -> None:
        """Replace the stream by ``layer``'s output (layer ``i`` of the model, or a replacement of it)."""
        self.hidden = [self.model.run_layer(layer, h, ctx[i]) for h, ctx in zip(self.hidden, self.ctx)]
        check_stream(self.who, self.hidden, self.model.prefix.format(i=i) + "*")


Taps = Callable[[int, torch.nn.Module], list[Any]]  # (layer index, teacher layer) -> hook handles
Solve = Callable[[int, torch.nn.Module], "torch.nn.Module | None"]


def walk(teacher: Stream, student: Stream | None = None, *, taps: Taps | None = None, solve: Solve | None = None,
         after: Callable[[int], None] | None = None) -> None:
    """Advance ``teacher`` (and ``student``) through every layer, in order, each layer's weights loaded from disk
    and released after it runs.

    Per layer ``i``: the teacher's layer runs with the hooks ``taps(i, layer)`` registers (removed after), then
    ``solve(i, student_layer)`` may replace the student's layer (it reads ``student.hidden``, the student's input,
    and ``teacher.hidden``, the teacher's output; it returns the layer to run, or None for the one loaded), the
    student's layer runs, and ``after(i)`` sees both streams after layer ``i``.
    """
    for i in range(teacher.model.num_layers):
        layer = teacher.model.load_layer(i)
        hooks = taps(i, layer) if taps else []
        try:
            teacher.advance(layer, i)
        finally:
            for hook in hooks:
                hook.remove()
            teacher.model.release_layer(i)
        if student is not None:
            s_layer = student.model.load_layer(i)
            try:
                if solve is not None:
                    s_layer = solve(i, s_layer) or s_layer
                student.advance(s_layer, i)
            finally:
                student.model.release_layer(i)
        if after is not None:
            after(i)


def check_stream(who: str, hidden: list[torch.Tensor], tensors: str) -> None:
    """The residual stream must stay finite: a NaN or Inf names the model and the tensors that produced it."""
    for h in hidden:
        if not bool(torch.isfinite(h).all()):
            raise CheckpointError(f"{who}: the residual stream is not finite after {tensors} (float32 forward pass "
                                  "of the layer-streaming pass): those weights overflow")


def untangle_heads(batches: list[torch.Tensor], *counts: int) -> list[torch.Tensor]:
    """The batches, one token shorter where their length equals a head count (``counts``): a per-head tensor's
    layout, ``(B, H, T, hd)`` or ``(B, T, H, hd)``, can then be told from its shape (:func:`tokens_first`)."""
    return [b[:, :-1] for b in batches] if batches and batches[0].shape[1] in counts else batches


def tokens_first(t: torch.Tensor, seq: int) -> torch.Tensor:
    """A per-head norm's input or output with the tokens on axis 1: ``(B, T, F)`` as it is, ``(B, H, T, hd)`` (StableLM,
    Phi) transposed to ``(B, T, H, hd)``; ``seq`` (T) must differ from the head count (:func:`untangle_heads`)."""
    return t.transpose(1, 2) if t.dim() == 4 and t.shape[2] == seq and t.shape[1] != seq else t


# ---- calibration fits ------------------------------------------------------------------------------------------


def _leading_sum(t: torch.Tensor, seq: int) -> torch.Tensor:
    """Sum over batch and position, keeping the channels (and the heads of a per-head norm's input, whichever axis
    holds them): (B, T, F) -> (F,); (B, T, H, hd) or (B, H, T, hd) -> (H * hd,)."""
    t = tokens_first(t, seq)
    return t.reshape(-1, *t.shape[2:]).sum(0).reshape(-1)


@torch.no_grad()
def fit_sites(*, teacher: str | Path, batches: Iterable[torch.Tensor], sites: list[Any],
              device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The values of :class:`~kept.convert.plan.FitSite` s on the teacher's activations over ``batches``.

    ``gain``: g_i = E[(x_i/r) y_i] / E[(x_i/r)^2] with r = sqrt(mean(x^2) + eps) as in the student (Appendix A; y
    = x for a site without a source norm). ``diag``: s_i = E[u_i y_i] / E[u_i^2]. Sums in float64 over every
    calibration token; a channel never active keeps the source's gain (or 1). Returns float64 vectors by key."""
    model = StreamingModel(teacher, device=device)
    sums: dict[str, list[torch.Tensor]] = {}

    def add(key: str, num: torch.Tensor, den: torch.Tensor) -> None:
        if key in sums:
            sums[key][0] += num
            sums[key][1] += den
        else:
            sums[key] = [num, den]

    def hook(site: Any, seq: int) -> Any:
        def fn(mod: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = (args[0] if args else kwargs["hidden_states"]).double()
            y = x if site.identity else (out[0] if isinstance(out, tuple) else out).double()
            if site.kind == "gain":
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.eps)
            add(site.key, _leading_sum(x * y, seq), _leading_sum(x * x, seq))
        return fn

    fallback: dict[str, torch.Tensor] = {}
    try:
        batches = list(batches)
        if not batches:
            raise ConfigError("fit: no calibration batches")
        batches = untangle_heads(batches, model.arch.num_heads, model.arch.num_kv_heads)
        seq = batches[0].shape[1]
        stream = Stream(model, batches, who=f"teacher {teacher}")
        by_layer: dict[int | None, list[Any]] = {}
        for site in sites:
            by_layer.setdefault(site.layer, []).append(site)

        def taps(i: int, layer: torch.nn.Module) -> list[Any]:
            handles = []
            for site in by_layer.get(i, []):
                module = _site_module(layer, site.module, model.sites)
                if site.kind == "gain" and not site.identity and getattr(module, "weight", None) is not None:
                    fallback[site.key] = module.weight.detach().double().cpu()
                handles.append(module.register_forward_hook(hook(site, seq), with_kwargs=True))
            return handles

        walk(stream, taps=taps)
        hidden = stream.hidden
        for site in by_layer.get(None, []):  # the final norm
            for h in hidden:
                y = model.final_norm(h)
                x = h.double() * torch.rsqrt(h.double().pow(2).mean(-1, keepdim=True) + model.eps)
                add(site.key, _leading_sum(x * y.double(), h.shape[1]), _leading_sum(x * x, h.shape[1]))
            if getattr(model.final, "weight", None) is not None:
                fallback[site.key] = model.final.weight.detach().double().cpu()
        out = {}
        for site in sites:
            num, den = sums[site.key]
            keep = fallback.get(site.key, torch.ones_like(num.cpu()))
            value = torch.where(den.cpu() > 0, num.cpu() / den.cpu().clamp_min(1e-300), keep)
            if site.pairs is not None:  # equal on both channels of each rotate-half pair: commutes with RoPE
                hd, r = site.pairs
                v = value.view(-1, hd)
                mean = (v[:, : r // 2] + v[:, r // 2 : r]) / 2
                v[:, : r // 2], v[:, r // 2 : r] = mean, mean
            out[site.key] = value
        return out
    finally:
        model.close()


def _site_module(layer: torch.nn.Module, path: str, norm_sites: dict[str, tuple[str, ...]]) -> torch.nn.Module:
    """The module at ``path`` in the layer; a LayerNorm the layer lacks (one norm feeding both branches) is served
    by the first of the runtime's norm sites."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return layer.get_submodule(next(iter(norm_sites)))
