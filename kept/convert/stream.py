"""Layer streaming: the one loop that runs a teacher (and a student) through calibration text one decoder layer at a
time, for the fidelity report, the Appendix-A gains and the closed-form layer fits (GPTQ's sequential loop).

:class:`StreamingModel` runs a checkpoint with transformers' own layer class (the source family's, e.g.
``GPTNeoXLayer``; ``LlamaDecoderLayer`` for a converted student), one layer's weights in memory at a time, so a 14B
pass needs memory for one layer, the hidden states and an LM head, not for two models. :class:`Stream` is one
model's residual stream over the calibration batches; :func:`walk` advances a teacher stream and a student stream
layer by layer::

    for i in layers:
        run teacher layer i (taps collect what the solve needs)
        load student layer i -> solve it from what was collected (calibration) -> run it -> next

so each student layer is solved on the outputs of the student layers already solved before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kept.checkpoint import TensorReader
from kept.errors import CheckpointError


class StreamingModel:
    """Runs a checkpoint one decoder layer at a time with transformers' own layer class: a source of any supported
    family (its runtime, :class:`kept.convert.families.Runtime`) or a stock Llama checkpoint."""

    def __init__(self, directory: str | Path, *, device: str | torch.device = "cpu") -> None:
        import importlib

        from kept.convert.families import read_source
        from kept.convert.families.base import read_config
        from kept.convert.plan import LEGACY_KEYS

        self.directory = Path(directory)
        self.device = torch.device(device)
        raw = read_config(self.directory)
        self.reader = TensorReader(self.directory)
        names = set(self.reader.names())
        if raw.get("model_type") == "llama":
            from transformers import LlamaConfig

            self.kind = "llama"
            self.config = LlamaConfig(**{k: v for k, v in raw.items() if k not in LEGACY_KEYS})
            module, layer_name, rope_name = "llama", "LlamaDecoderLayer", "LlamaRotaryEmbedding"
            self.prefix, self.embed_name = "model.layers.{i}.", "model.embed_tokens.weight"
            self.eps = self.config.rms_norm_eps
            self.norm_kind, self.norm_w, self.norm_b = "rms", "model.norm.weight", None
            tied = bool(self.config.tie_word_embeddings)
            self.head_name, self.head_bias = (self.embed_name if tied else "lm_head.weight"), None
            self.sites: dict[str, tuple[str, ...]] = {}
        else:
            family, arch, raw = read_source(self.directory)
            self.kind = family.name
            self.config = family.teacher_config(raw, self.directory / "config.json")
            rt = family.runtime
            module, layer_name, rope_name, self.prefix = rt.module, rt.layer_class, rt.rotary_class, rt.layer_prefix
            self.sites = rt.norm_sites

            def stored(logical: str) -> str:
                return next((t for t in family.tensors[logical] if t in names), family.tensors[logical][0])

            self.embed_name = stored("embed")
            self.eps = arch.norm_eps
            self.norm_kind = "layer"
            self.norm_w = stored("final.w") if arch.norm_weight else None
            self.norm_b = stored("final.b") if arch.norm_bias else None
            self.head_name = self.embed_name if arch.tied else stored("head.w")
            self.head_bias = stored("head.b") if arch.head_bias else None
        mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        layer_cls, rope_cls = getattr(mod, layer_name), getattr(mod, rope_name)
        self.config._attn_implementation = "sdpa"  # causal via is_causal when no mask is given
        self.num_layers = self.config.num_hidden_layers
        with torch.device("meta"):
            layer = layer_cls(self.config, layer_idx=0)
        # One layer's parameters (float32, on the device), allocated once and refilled for every layer from the
        # file's mapped pages: memory stays flat over the layers.
        self._layer = layer.to_empty(device=self.device).float().eval()
        self._params = dict(self._layer.state_dict(keep_vars=True))
        self.rotary = rope_cls(self.config).to(self.device)

    def weight(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.reader.get(name).to(device=self.device, dtype=dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding output (B, T, d), float32; reads only the rows of the ids present."""
        uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
        rows = torch.cat([self.reader.get_rows(self.embed_name, u, u + 1) for u in uniq.tolist()])
        return F.embedding(inverse, rows).to(device=self.device, dtype=torch.float32)

    def positions(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(h.shape[1], device=self.device).unsqueeze(0)
        return self.rotary(h, position_ids=pos)

    @torch.no_grad()
    def load_layer(self, i: int) -> torch.nn.Module:
        """Decoder layer ``i`` with its weights (float32, on the device)."""
        for key, param in self._params.items():
            name = self.prefix.format(i=i) + key
            src = self._mapped(name)
            if tuple(src.shape) != tuple(param.shape):
                raise CheckpointError(f"{self.directory}: tensor {name!r} has shape {tuple(src.shape)}, "
                                      f"expected {tuple(param.shape)}")
            param.copy_(src)
        return self._layer

    def _mapped(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows of a tensor as the file's mapped pages (no copy), or read (a strided pickled view)."""
        info = self.reader.info(name)
        stop = (info.shape[0] if info.shape else 1) if stop is None else stop
        if not info.dense:
            return self.reader.get_rows(name, start, stop) if info.shape else self.reader.get(name)
        rows = self.reader.mapped_rows(name, start, stop)
        return rows if info.shape else rows.view(())

    def head_rows(self, start: int, stop: int) -> torch.Tensor:
        """LM-head rows ``start:stop`` (float32, on the device)."""
        rows = self._mapped(self.head_name, start, stop)
        if getattr(self, "_head", None) is None or self._head.shape[0] < rows.shape[0]:
            self._head = torch.empty(rows.shape, dtype=torch.float32, device=self.device)
        out = self._head[: rows.shape[0]]
        out.copy_(rows)
        return out

    def head_bias_rows(self, start: int, stop: int) -> torch.Tensor | None:
        """LM-head bias ``start:stop`` (float64), or None."""
        if self.head_bias is None:
            return None
        return self.reader.get(self.head_bias)[start:stop].to(device=self.device, dtype=torch.float64)

    def vocab_size(self) -> int:
        return self.reader.info(self.head_name).shape[0]

    def final_norm(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight(self.norm_w) if self.norm_w else None
        if self.norm_kind == "layer":
            b = self.weight(self.norm_b) if self.norm_b else None
            return F.layer_norm(h, (h.shape[-1],), w, b, self.eps)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * w  # LlamaRMSNorm in float32

    def close(self) -> None:
        self.reader.close()


class Stream:
    """One model's residual stream over calibration batches (token ids ``[b, T]`` each): embedded at construction,
    then advanced one decoder layer at a time; the stream must stay finite (an error names the tensors)."""

    def __init__(self, model: StreamingModel, batches: list[torch.Tensor], *, who: str) -> None:
        self.model, self.who = model, who
        self.hidden = [model.embed(b.to(model.device)) for b in batches]  # (b, T, d) each
        self.pos = [model.positions(h) for h in self.hidden]
        check_stream(who, self.hidden, model.embed_name)

    def advance(self, layer: torch.nn.Module, i: int) -> None:
        """Replace the stream by ``layer``'s output (layer ``i`` of the model, for the error message)."""
        self.hidden = [layer_out(layer(h, attention_mask=None, position_embeddings=p))
                       for h, p in zip(self.hidden, self.pos)]
        check_stream(self.who, self.hidden, self.model.prefix.format(i=i) + "*")


Taps = Callable[[int, torch.nn.Module], list[Any]]  # (layer index, teacher layer) -> hook handles
Solve = Callable[[int, torch.nn.Module], "torch.nn.Module | None"]


def walk(teacher: Stream, student: Stream | None = None, *, taps: Taps | None = None, solve: Solve | None = None,
         after: Callable[[int], None] | None = None) -> None:
    """Advance ``teacher`` (and ``student``) through every layer, in order.

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
        if student is not None:
            s_layer = student.model.load_layer(i)
            if solve is not None:
                s_layer = solve(i, s_layer) or s_layer
            student.advance(s_layer, i)
        if after is not None:
            after(i)


def layer_out(out: Any) -> torch.Tensor:
    """A decoder layer's output stream (some layer classes return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def check_stream(who: str, hidden: list[torch.Tensor], tensors: str) -> None:
    """The residual stream must stay finite: a NaN or Inf names the model and the tensors that produced it."""
    for h in hidden:
        if not bool(torch.isfinite(h).all()):
            raise CheckpointError(f"{who}: the residual stream is not finite after {tensors} (float32 forward pass "
                                  "of the layer-streaming pass): those weights overflow")
