"""GPT-J (``GPTJForCausalLM``): one LayerNorm (gamma, beta) feeding attention and a non-gated GELU MLP in parallel
(``x + attn(n x) + mlp(n x)``: no Llama equivalent, made sequential and measured), interleaved partial rotary
(``rotary_dim`` channels as pairs (2i, 2i + 1), base 10000: each head's q/k rows permuted to Llama's halves, exact),
biases on the MLP and on the LM head (part of the logit offset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families.base import Arch, Family, Runtime, hf_config, positive, rotary_dim, special_ids
from kept.convert.families.base import rope_scaling

_L = "transformer.h.{i}"


def read_arch(cfg: dict[str, Any], path: Path) -> Arch:
    c = hf_config(cfg, path)
    positive({"vocab_size": c.vocab_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_positions": c.n_positions}, path, "vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
    head_dim = c.n_embd // c.n_head
    return Arch(
        family="gptj", vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.n_inner or 4 * c.n_embd,
        num_layers=c.n_layer, num_heads=c.n_head, num_kv_heads=c.n_head, head_dim=head_dim,
        rotary_dim=rotary_dim(head_dim, (c.rotary_dim or head_dim) / head_dim, path), rotary_style="interleaved",
        rope_theta=10000.0, rope_scaling=rope_scaling({}, path), max_position_embeddings=c.n_positions,
        norm_eps=float(c.layer_norm_epsilon), norm_weight=True, norm_bias=True, shared_norm=True,
        parallel_residual=True, gated_mlp=False, hidden_act=c.activation_function, mlp_bias=True, head_bias=True,
        tied=bool(c.tie_word_embeddings), torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        special_ids=special_ids(cfg),
    )


FAMILY = Family(
    name="gptj",
    model_types=("gptj",),
    read_arch=read_arch,
    tensors={
        "embed": ("transformer.wte.weight",),
        **{f"{p}.w": (f"{_L}.attn.{p}_proj.weight",) for p in "qkv"},
        "o.w": (f"{_L}.attn.out_proj.weight",),
        "fc1.w": (f"{_L}.mlp.fc_in.weight",),
        "fc1.b": (f"{_L}.mlp.fc_in.bias",),
        "down.w": (f"{_L}.mlp.fc_out.weight",),
        "down.b": (f"{_L}.mlp.fc_out.bias",),
        "ln1.w": (f"{_L}.ln_1.weight",),
        "ln1.b": (f"{_L}.ln_1.bias",),
        "final.w": ("transformer.ln_f.weight",),
        "final.b": ("transformer.ln_f.bias",),
        "head.w": ("lm_head.weight",),
        "head.b": ("lm_head.bias",),
    },
    dropped={f"{_L}.attn.bias": "causal-mask buffer of older checkpoints",
             f"{_L}.attn.masked_bias": "mask-fill buffer of older checkpoints",
             f"{_L}.attn.embed_positions": "sinusoid table of older checkpoints, recomputed"},
    runtime=Runtime(layer_prefix=f"{_L}.", final_norm="transformer.ln_f",
                    norm_sites={"ln_1": ("input_layernorm", "post_attention_layernorm")}),
    teacher_config=hf_config,
    tokenizer="tokenizers",
    hf_class="GPTJForCausalLM",
)
