"""Plain-PyTorch ports of the two remote-code families users convert most, written from their published modeling
code (never executed here): InternLM2 / InternLM2.5 (``modeling_internlm2.py`` of internlm/internlm2-7b, read
through the public copy NanSang2000/S1mpleAgent@0143463 ``modeling_internlm2.py``) and Baichuan2-7B
(``modeling_baichuan.py`` of baichuan-inc/Baichuan2-7B-Base: ``W_pack`` split by ``unflatten(-1, (3, hidden))``,
RoPE base 10000, ``NormHead``). They hold exactly the published tensor names, so they load published checkpoints
as they are, and they are the runtime of the fidelity pass and the reference of the tests for those families.

What they compute, as the published code does in eval mode: RMSNorm (float32 statistics), rotate-half RoPE over
the whole head (InternLM2: optional ``linear`` / ``dynamic`` scaling), softmax attention with a causal mask and
scores scaled by head_dim ** -0.5, a gated SiLU MLP, a final RMSNorm and the LM head (Baichuan2: rows
L2-normalised, as ``NormHead`` does on its first eval forward). InternLM2's ``wqkv`` is grouped per KV head:
``[kv head: q * (heads / kv_heads), k, v]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RemoteConfig:
    """The keys of the published config.json these ports read (InternLM2 and Baichuan2 share the Llama ones)."""

    vocab_size: int = 1000
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    bias: bool = False  # InternLM2: wqkv / wo biases
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict)  # every other key of config.json, kept

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "RemoteConfig":
        known = {k for k in cls.__dataclass_fields__ if k != "extra"}
        return cls(**{k: v for k, v in cfg.items() if k in known},
                   extra={k: v for k, v in cfg.items() if k not in known})

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """cos/sin of rotate-half RoPE at positions 0..T-1 (InternLM2's linear and dynamic NTK scalings)."""

    def __init__(self, cfg: RemoteConfig) -> None:
        super().__init__()
        self.dim = cfg.hidden_size // cfg.num_attention_heads
        self.base, self.max_pos = cfg.rope_theta, cfg.max_position_embeddings
        self.scaling = cfg.rope_scaling or {}

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        kind, factor = self.scaling.get("type", self.scaling.get("rope_type")), self.scaling.get("factor", 1.0)
        base = self.base
        if kind == "dynamic" and seq_len > self.max_pos:
            base = base * ((factor * seq_len / self.max_pos) - (factor - 1)) ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        if kind == "linear":
            t = t / factor
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, dim)
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Causal softmax attention of (B, H, T, d) q and (B, Hkv, T, d) k, v, after RoPE; returns (B, T, H * d)."""
    cos, sin = rope
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    t = q.shape[2]
    mask = torch.full((t, t), float("-inf"), device=q.device).triu(1)
    probs = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    out = probs @ v  # (B, H, T, d)
    return out.transpose(1, 2).reshape(q.shape[0], t, -1)


class InternLM2Attention(nn.Module):
    def __init__(self, cfg: RemoteConfig) -> None:
        super().__init__()
        self.heads, self.kv, self.dim = cfg.num_attention_heads, cfg.kv_heads, cfg.hidden_size // cfg.num_attention_heads
        self.wqkv = nn.Linear(cfg.hidden_size, (self.heads + 2 * self.kv) * self.dim, bias=cfg.bias)
        self.wo = nn.Linear(self.heads * self.dim, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        g = self.heads // self.kv
        qkv = self.wqkv(x).view(b, t, self.kv, g + 2, self.dim)  # grouped: [kv head: q * g, k, v]
        q = qkv[..., :g, :].reshape(b, t, self.heads, self.dim).transpose(1, 2)
        k, v = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)
        return self.wo(_attend(q, k, v, rope))


class BaichuanAttention(nn.Module):
    def __init__(self, cfg: RemoteConfig) -> None:
        super().__init__()
        self.heads, self.dim, self.hidden = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size
        self.W_pack = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p.view(b, t, self.heads, self.dim).transpose(1, 2) for p in self.W_pack(x).split(self.hidden, -1))
        return self.o_proj(_attend(q, k, v, rope))


class GatedMLP(nn.Module):
    def __init__(self, cfg: RemoteConfig, gate: str, up: str, down: str) -> None:
        super().__init__()
        self.names = (gate, up, down)
        for name, (i, o) in zip(self.names, ((cfg.hidden_size, cfg.intermediate_size),) * 2 +
                                ((cfg.intermediate_size, cfg.hidden_size),)):
            setattr(self, name, nn.Linear(i, o, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(F.silu(gate(x)) * up(x))


class _Layer(nn.Module):
    def __init__(self, cfg: RemoteConfig, internlm: bool) -> None:
        super().__init__()
        eps = cfg.rms_norm_eps
        if internlm:
            self.attention = InternLM2Attention(cfg)
            self.feed_forward = GatedMLP(cfg, "w1", "w3", "w2")
            self.attention_norm, self.ffn_norm = RMSNorm(cfg.hidden_size, eps), RMSNorm(cfg.hidden_size, eps)
            self._parts = ("attention_norm", "attention", "ffn_norm", "feed_forward")
        else:
            self.self_attn = BaichuanAttention(cfg)
            self.mlp = GatedMLP(cfg, "gate_proj", "up_proj", "down_proj")
            self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
            self._parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        n1, attn, n2, mlp = (getattr(self, p) for p in self._parts)
        h = hidden_states + attn(n1(hidden_states), position_embeddings)
        return h + mlp(n2(h))


class _Model(nn.Module):
    def __init__(self, cfg: RemoteConfig, internlm: bool) -> None:
        super().__init__()
        self.embed_name = "tok_embeddings" if internlm else "embed_tokens"
        setattr(self, self.embed_name, nn.Embedding(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList([_Layer(cfg, internlm) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        h = getattr(self, self.embed_name)(input_ids)
        rope = self.rotary(input_ids.shape[1], input_ids.device)
        for layer in self.layers:
            h = layer(h, position_embeddings=rope)
        return self.norm(h)


class _CausalLM(nn.Module):
    """``model`` (embedding, layers, final norm) and the LM head; ``forward(ids)`` returns an object with
    ``.logits`` as transformers' classes do."""

    internlm = True
    head_name = "output"
    config_class = RemoteConfig
    published: dict[str, Any] = {}

    def __init__(self, config: RemoteConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _Model(config, self.internlm)
        setattr(self, self.head_name, nn.Linear(config.hidden_size, config.vocab_size, bias=False))

    @property
    def base_model(self) -> nn.Module:
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        return getattr(self.model, self.model.embed_name)

    def head_weight(self) -> torch.Tensor:
        return getattr(self, self.head_name).weight

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        h = self.model(input_ids)
        return type("Output", (), {"logits": F.linear(h, self.head_weight())})()

    def save_pretrained(self, directory: str | Path) -> None:
        """The published on-disk layout: ``model.safetensors`` under the published tensor names and a
        config.json with the published keys (``model_type``, ``architectures``, the remote ``auto_map``)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
        cfg = {k: v for k, v in asdict(self.config).items() if k != "extra"}
        cfg.update({**self.published, **self.config.extra})
        (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "_CausalLM":
        """A checkpoint in the published layout (config.json + safetensors), float32, eval mode."""
        from kept.checkpoint import TensorReader

        cfg = RemoteConfig.from_dict(json.loads((Path(directory) / "config.json").read_text()))
        model = cls(cfg)
        with TensorReader(directory) as reader:
            model.load_state_dict({n: reader.get(n).float() for n in reader.names()})
        return model.float().eval()


class InternLM2ForCausalLM(_CausalLM):
    internlm, head_name = True, "output"
    published = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"],
                 "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                              "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}


class BaichuanForCausalLM(_CausalLM):
    internlm, head_name = False, "lm_head"
    published = {"model_type": "baichuan", "architectures": ["BaichuanForCausalLM"],
                 "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                              "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}}

    def head_weight(self) -> torch.Tensor:
        return F.normalize(self.lm_head.weight)  # NormHead: rows L2-normalised (once, in eval)
