"""The three objectives: UT (next-token cross-entropy), XKD-h (residual-stream MSE), XKD-z (per-token KL).

The vocabulary-sized losses (UT and XKD-z) run through :class:`ChunkedHeadLoss`: the final hidden states are
projected through the LM head a chunk of tokens at a time, so the (B, T, V) float32 logits never exist at once;
the backward pass recomputes each chunk's logits (or, with ``recompute=False``, the gradients are formed chunk by
chunk during the forward pass and only the (N, d) and (V, d) gradients are kept).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVE_METRIC = {"ut": "ce", "xkd_h": "mse", "xkd_z": "kl"}


# ---------------------------------------------------------------------------------------------------------------
# Targets: what one chunk of student logits is compared with. Each returns the chunk's summed loss and, on
# request, d(summed loss)/d(student logits) in float32.
# ---------------------------------------------------------------------------------------------------------------


class TeacherTarget:
    """XKD-z against a live teacher: its final (normed) hidden states and LM-head weight, projected per chunk.

    loss = T^2 * sum_v p_t(v) (log p_t(v) - log p_s(v)) with p = softmax(z / T); d loss / d z_s = T (p_s - p_t).
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, *, temperature: float = 1.0) -> None:
        self.hidden = hidden  # (N, d), no grad
        self.weight = weight  # (V, d), no grad
        self.t = float(temperature)

    def loss_and_grad(self, z: torch.Tensor, sl: slice, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        zt = (self.hidden[sl] @ self.weight.to(self.hidden.dtype).T).float()  # (C, V)
        logp_t = torch.log_softmax(zt if self.t == 1.0 else zt.div_(self.t), dim=-1)  # (C, V)
        del zt
        logp_s = torch.log_softmax(z if self.t == 1.0 else z / self.t, dim=-1)  # (C, V)
        p_t = logp_t.exp()  # (C, V)
        # sum over tokens of KL; log_softmax is finite, so tokens with p_t = 0 contribute exactly 0
        loss = logp_t.sub_(logp_s).mul_(p_t).sum() * (self.t**2)
        if not need_grad:
            return loss, None
        grad = logp_s.exp_().sub_(p_t).mul_(self.t)  # (C, V)
        return loss, grad


class LabelTarget:
    """UT: next-token cross-entropy; label -100 is ignored. d loss / d z = softmax(z) - onehot(label)."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels  # (N,) int64

    def loss_and_grad(self, z: torch.Tensor, sl: slice, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        labels = self.labels[sl]
        valid = labels != -100
        safe = labels.clamp_min(0)
        lse = torch.logsumexp(z, dim=-1)  # (C,)
        picked = z.gather(1, safe[:, None]).squeeze(1)
        loss = ((lse - picked) * valid).sum()
        if not need_grad:
            return loss, None
        grad = torch.softmax(z, dim=-1)  # (C, V)
        grad.scatter_add_(1, safe[:, None], -torch.ones_like(picked)[:, None])
        grad.mul_(valid[:, None])
        return loss, grad


class TopKTarget:
    """Offline XKD-z against cached teacher top-k log-probs plus the remaining mass.

    The teacher is seen as a distribution over the k cached tokens plus one "rest" bucket; the loss is the KL
    between that and the student's distribution bucketed the same way:
    T^2 * [sum_{v in K} p_t(v) (log p_t(v) - log p_s(v)) + r_t (log r_t - log r_s)]. With k = V the rest bucket is
    empty and this is exactly the online KL.
    """

    def __init__(self, indices: torch.Tensor, logprobs: torch.Tensor, log_rest: torch.Tensor, *,
                 temperature: float = 1.0) -> None:
        self.indices = indices  # (N, k) int64
        self.logprobs = logprobs  # (N, k) float32, teacher log-probs at temperature T
        self.log_rest = log_rest  # (N,) float32, log of the teacher mass outside the k tokens (-inf if none)
        self.t = float(temperature)

    def loss_and_grad(self, z: torch.Tensor, sl: slice, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = z.detach().requires_grad_(need_grad)
        with torch.enable_grad() if need_grad else torch.no_grad():
            logp_s = torch.log_softmax(z / self.t, dim=-1)  # (C, V)
            idx = self.indices[sl]
            lp_t = self.logprobs[sl].float()  # (C, k)
            lr_t = self.log_rest[sl].float()  # (C,)
            lp_s = logp_s.gather(1, idx)  # (C, k)
            # student's log mass outside K: logsumexp over the complement; a -1e4 column keeps rows with an empty
            # complement (k = V) finite so no NaN reaches the gradient (exp(-1e4) = 0 in float32)
            masked = logp_s.scatter(1, idx, float("-inf"))
            pad = torch.full_like(lr_t[:, None], -1e4)
            lr_s = torch.logsumexp(torch.cat([masked, pad], dim=1), dim=1)  # (C,)
            head = (lp_t.exp() * (lp_t - lp_s)).sum()
            has_rest = torch.isfinite(lr_t)
            lr_t = torch.where(has_rest, lr_t, torch.zeros_like(lr_t))
            r_t = lr_t.exp() * has_rest  # 0 where the k tokens hold all the mass
            rest = (r_t * (lr_t - lr_s)).sum()
            loss = (head + rest) * (self.t**2)
        if not need_grad:
            return loss.detach(), None
        (grad,) = torch.autograd.grad(loss, z)
        return loss.detach(), grad


# ---------------------------------------------------------------------------------------------------------------


class ChunkedHeadLoss(torch.autograd.Function):
    """mean over ``normalizer`` tokens of target losses on ``hidden @ weight.T``, computed ``chunk`` rows at a time.

    hidden: (N, d) final hidden states (after the final norm); weight: (V, d) LM-head weight.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: Any, chunk: int,
                normalizer: float, recompute: bool) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_grad = (need_h or need_w) and not recompute
        w = weight.to(hidden.dtype)  # the matmul runs in the activations' dtype, as autocast would
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad and need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad and need_w else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                sl = slice(start, start + chunk)
                z = (hidden[sl] @ w.T).float()  # (C, V)
                loss, g = target.loss_and_grad(z, sl, need_grad)
                del z
                total += loss
                if g is not None:
                    _accumulate(g, hidden[sl], w, sl, grad_h, grad_w)
        ctx.target, ctx.chunk, ctx.normalizer, ctx.recompute = target, chunk, normalizer, recompute
        if recompute:
            ctx.save_for_backward(hidden, weight)
        else:
            ctx.grads = (grad_h, grad_w)
            ctx.weight_dtype = weight.dtype
        return total / normalizer

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        scale = grad_out.float() / ctx.normalizer
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not ctx.recompute:
            grad_h, grad_w = ctx.grads
            ctx.grads = None
            gh = grad_h.mul_(scale.to(grad_h.dtype)) if grad_h is not None else None
            gw = grad_w.mul_(scale).to(ctx.weight_dtype) if grad_w is not None else None
            return gh, gw, None, None, None, None
        hidden, weight = ctx.saved_tensors
        w = weight.to(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk):
                sl = slice(start, start + ctx.chunk)
                z = (hidden[sl] @ w.T).float()  # (C, V)
                _, g = ctx.target.loss_and_grad(z, sl, True)
                del z
                _accumulate(g.mul_(scale), hidden[sl], w, sl, grad_h, grad_w)
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None, None


def _accumulate(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, sl: slice,
                grad_h: torch.Tensor | None, grad_w: torch.Tensor | None) -> None:
    """grad_h[sl] = g @ W; grad_w += g.T @ h (g: (C, V) float32)."""
    gc = g.to(h.dtype)
    if grad_h is not None:
        torch.matmul(gc, w, out=grad_h[sl])  # (C, d)
    if grad_w is not None:
        if h.dtype == torch.float32:
            grad_w.addmm_(gc.T, h)  # (V, d)
        else:
            grad_w.add_(gc.T @ h)


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, target: Any, *, chunk: int = 1024,
                      normalizer: float | None = None, recompute: bool = True) -> torch.Tensor:
    """Mean target loss of the logits ``hidden @ weight.T`` without materialising them. ``hidden`` (..., d)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    n = float(flat.shape[0] if normalizer is None else normalizer)
    return ChunkedHeadLoss.apply(flat, weight, target, int(chunk), n, bool(recompute))


def chunked_kl(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
               teacher_weight: torch.Tensor, *, temperature: float = 1.0, chunk: int = 1024,
               recompute: bool = True) -> torch.Tensor:
    """Per-token KL(teacher || student) averaged over tokens, scaled by T^2; logits formed chunk by chunk."""
    target = TeacherTarget(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), teacher_weight,
                           temperature=temperature)
    return chunked_head_loss(student_hidden, student_weight, target, chunk=chunk, recompute=recompute)


def naive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Reference: the same KL from full (..., V) logits."""
    logp_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    logp_t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    return kl.mean() * temperature**2


def next_token_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels aligned with positions: position t predicts token t+1; the last position is ignored (-100)."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def hidden_mse(student_slots: list[torch.Tensor], teacher_slots: list[torch.Tensor], *,
               centered: bool) -> torch.Tensor:
    """XKD-h: MSE between residual streams, averaged over slots, tokens and channels.

    ``centered``: the student's stream was mean-centred by the conversion, so the teacher's stream is compared after
    projecting out the all-ones direction (subtracting each vector's channel mean).
    """
    if len(student_slots) != len(teacher_slots):
        raise ValueError(f"{len(student_slots)} student slots vs {len(teacher_slots)} teacher slots")
    total = torch.zeros((), dtype=torch.float32, device=student_slots[0].device)
    for s, t in zip(student_slots, teacher_slots):
        t = t.float()
        if centered:
            t = t - t.mean(dim=-1, keepdim=True)
        total = total + F.mse_loss(s.float(), t)
    return total / len(student_slots)


# ---------------------------------------------------------------------------------------------------------------


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM of any family (``model.model`` for Llama/StableLm/OLMo/Phi, ``gpt_neox`` for
    GPT-NeoX): transformers' ``base_model``, whose output ``last_hidden_state`` is after the final norm."""
    return model.base_model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM of any family: ``base_model.layers``, Falcon's / GPT-J's ``h``."""
    base = decoder(model)
    return base.layers if hasattr(base, "layers") else base.h


def head_weight(model: nn.Module) -> torch.Tensor:
    """The (V, d) LM-head weight of a causal LM of any family (``lm_head``, GPT-NeoX's ``embed_out``)."""
    return model.get_output_embeddings().weight


def head_inputs(model: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden, weight)`` for the chunked head losses, which project with ``hidden @ weight.T`` alone: the head's
    own weight, or, for a head with a bias (Phi), ``[hidden, 1]`` and ``[weight, bias]``, whose product is
    ``hidden @ weight.T + bias`` exactly and passes gradients to both weight and bias."""
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    if bias is None:
        return hidden, head.weight
    ones = torch.ones(*hidden.shape[:-1], 1, dtype=hidden.dtype, device=hidden.device)
    weight = torch.cat([head.weight, bias.unsqueeze(1).to(head.weight.dtype)], dim=1)
    return torch.cat([hidden, ones], dim=-1), weight


class StreamCapture:
    """Forward hooks recording the residual stream at the L+1 slots: the embedding output and the raw output of
    every decoder layer (HF's ``output_hidden_states`` replaces the last slot by the final-normed state). Any
    family: the hooks sit on ``get_input_embeddings()`` and the decoder layers (:func:`decoder_layers`; docs/architecture.md, "How each
    family's residual slots line up")."""

    def __init__(self, model: nn.Module) -> None:
        layers = decoder_layers(model)
        self.num_slots = len(layers) + 1
        self._out: list[torch.Tensor | None] = [None] * self.num_slots
        self.armed = False  # record only during the forward passes we ask for (not gradient-checkpoint recomputes)
        self._handles = [model.get_input_embeddings().register_forward_hook(self._hook(0))]
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._hook(i + 1)))

    def _hook(self, slot: int):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self.armed:
                self._out[slot] = output[0] if isinstance(output, tuple) else output

        return fn

    def take(self) -> list[torch.Tensor]:
        """The recorded slots (and forget them)."""
        out, self._out = self._out, [None] * self.num_slots
        if any(o is None for o in out):
            raise RuntimeError("residual stream capture: a slot was not recorded")
        return out  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class StudentObjective(nn.Module):
    """The student plus its objective, so that the loss is computed inside ``forward`` of the module that
    accelerate prepares (DDP/FSDP/DeepSpeed see every parameter the loss touches, the LM head included)."""

    def __init__(self, student: nn.Module, *, objective: str, temperature: float = 1.0, chunk: int = 1024,
                 recompute: bool = True, centered: bool = False) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.temperature = temperature
        self.chunk = chunk
        self.recompute = recompute
        self.centered = centered
        self.capture = StreamCapture(student) if objective == "xkd_h" else None

    def forward(self, input_ids: torch.Tensor, teacher: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        if self.capture is not None:
            self.capture.armed = True
        try:
            out = decoder(self.student)(input_ids=input_ids, use_cache=False)
        finally:
            if self.capture is not None:
                self.capture.armed = False
        hidden, weight = head_inputs(self.student, out.last_hidden_state)  # (B, T, d) after the final norm, (V, d)
        if self.objective == "ut":
            labels = next_token_labels(input_ids).reshape(-1)
            n_valid = float(input_ids.shape[0] * (input_ids.shape[1] - 1))
            loss = chunked_head_loss(hidden, weight, LabelTarget(labels), chunk=self.chunk, normalizer=n_valid,
                                     recompute=self.recompute)
            return {"loss": loss, "ce": loss.detach()}
        assert teacher is not None
        if self.objective == "xkd_h":
            loss = hidden_mse(self.capture.take(), teacher["slots"], centered=self.centered)
            return {"loss": loss, "mse": loss.detach()}
        if "topk" in teacher:
            idx, lp, lr = teacher["topk"]
            target: Any = TopKTarget(idx.reshape(-1, idx.shape[-1]), lp.reshape(-1, lp.shape[-1]), lr.reshape(-1),
                                     temperature=self.temperature)
        else:
            th = teacher["hidden"]
            target = TeacherTarget(th.reshape(-1, th.shape[-1]), teacher["weight"], temperature=self.temperature)
        loss = chunked_head_loss(hidden, weight, target, chunk=self.chunk, recompute=self.recompute)
        return {"loss": loss, "kl": loss.detach() / (self.temperature**2)}


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, input_ids: torch.Tensor, *, objective: str,
                    capture: StreamCapture | None = None) -> dict[str, Any]:
    """What the objective needs from the frozen teacher for this batch."""
    if capture is not None:
        capture.armed = True
    try:
        out = decoder(teacher)(input_ids=input_ids, use_cache=False)
    finally:
        if capture is not None:
            capture.armed = False
    if objective == "xkd_h":
        assert capture is not None
        return {"slots": capture.take()}
    hidden, weight = head_inputs(teacher, out.last_hidden_state)
    return {"hidden": hidden, "weight": weight}


def perplexity(ce: float) -> float:
    return math.exp(min(ce, 50.0))
