"""An independent plain-PyTorch Orion forward pass, written from the architecture facts alone
(reference-facts.md), to check the StableLm teacher runtime against. No transformers code is used.

Orion = the Llama decoder with LayerNorm (weight + bias) at every norm site:
    h   = x + o_proj(attn(LN1(x)))         attention: full MHA, causal, RoPE (rotate-half, whole head dim)
    out = h + down(silu(gate(LN2(h))) * up(LN2(h)))
    logits = lm_head(LN_f(out))
"""

from __future__ import annotations

import math

import torch


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    return weight * (x - mu) / torch.sqrt(var + eps) + bias


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE over the whole head dim. x: (B, H, T, D)."""
    d = x.shape[-1]
    t = x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)  # (T, D)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotated = torch.cat([-x2, x1], -1)
    return x * cos + rotated * sin


def attention(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str, heads: int, theta: float) -> torch.Tensor:
    b, t, d = x.shape
    hd = d // heads

    def proj(name: str) -> torch.Tensor:
        return (x @ sd[f"{prefix}.{name}.weight"].T).view(b, t, heads, hd).transpose(1, 2)  # (B, H, T, hd)

    q, k, v = rope(proj("q_proj"), theta), rope(proj("k_proj"), theta), proj("v_proj")
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    out = torch.softmax(scores, -1) @ v  # (B, H, T, hd)
    out = out.transpose(1, 2).reshape(b, t, d)
    return out @ sd[f"{prefix}.o_proj.weight"].T


def mlp(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    gate = x @ sd[f"{prefix}.gate_proj.weight"].T
    up = x @ sd[f"{prefix}.up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ sd[f"{prefix}.down_proj.weight"].T


def orion_forward(
    sd: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, *, return_hidden: bool = False
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (B, T, V) of Orion weights ``sd`` (Orion tensor names) on token ids (B, T)."""
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = float(cfg.get("rope_theta", 10000.0))
    heads = cfg["num_attention_heads"]
    x = sd["model.embed_tokens.weight"][ids]  # (B, T, d)
    hidden = [x]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        a = layer_norm(x, sd[f"{p}.input_layernorm.weight"], sd[f"{p}.input_layernorm.bias"], eps)
        x = x + attention(a, sd, f"{p}.self_attn", heads, theta)
        m = layer_norm(x, sd[f"{p}.post_attention_layernorm.weight"], sd[f"{p}.post_attention_layernorm.bias"], eps)
        x = x + mlp(m, sd, f"{p}.mlp")
        hidden.append(x)
    logits = layer_norm(x, sd["model.norm.weight"], sd["model.norm.bias"], eps) @ sd["lm_head.weight"].T
    return (logits, hidden) if return_hidden else logits
