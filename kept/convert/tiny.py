"""Tiny checkpoints of every source family, built with transformers' own class of the family and written with its
own ``save_pretrained`` (the family's on-disk layout), for the tests, ``bench.run families`` and the fault suite.

Fresh initialisations have gamma = 1, beta = 0 and zero biases, which would hide every fold and offset, so
:func:`perturb` gives the norms random gains and biases, the linear layers random biases and the embedding a
non-zero row mean: the conversion then has something to get wrong.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

# Small configs per family, with the options that matter to the conversion; overrides are config kwargs.
_SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=0, eos_token_id=2)
_GQA = dict(_SMALL, num_key_value_heads=2)
TINY: dict[str, dict[str, Any]] = {
    "olmo": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None,
                 eos_token_id=2),
    "stablelm": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, max_position_embeddings=128, partial_rotary_factor=0.25,
                     use_qkv_bias=True, use_parallel_residual=False, qk_layernorm=False, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=2),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=128, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
                     tie_word_embeddings=False, bos_token_id=0, eos_token_id=2),
    "phi": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, partial_rotary_factor=0.5, hidden_act="gelu_new",
                tie_word_embeddings=False, bos_token_id=0, eos_token_id=2),
    "llama": dict(_GQA, attention_bias=True, mlp_bias=True),
    "mistral": dict(_GQA, sliding_window=None),
    "ministral": dict(_GQA, sliding_window=None),
    "qwen2": dict(_GQA, use_sliding_window=False),
}
CLASSES = {"olmo": ("OlmoConfig", "OlmoForCausalLM"), "stablelm": ("StableLmConfig", "StableLmForCausalLM"),
           "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"), "phi": ("PhiConfig", "PhiForCausalLM")}
TEXT = ["The quick brown fox jumps over the lazy dog.", "Language models predict the next token from context.",
        "def add(a, b):\n    return a + b\n", "Seoul is the capital of Korea; Tokyo is the capital of Japan.",
        "It costs $12.50 (about 15,000 won) in 2024."]


def train_bpe(directory: Path, *, vocab_size: int = 320) -> int:
    """A byte-level BPE ``tokenizer.json`` (+ ``tokenizer_config.json`` with a chat template) trained on a few
    lines, with ``<|pad|>``=0 ... as the first ids; returns its vocabulary size."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|pad|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 20, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "pad_token": "<|pad|>",
           "eos_token": "<|endoftext|>", "model_max_length": 128,
           "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return tok.get_vocab_size(with_added_tokens=True)


@torch.no_grad()
def perturb(model: torch.nn.Module, *, seed: int = 0) -> None:
    """Random norm gains and biases, random linear biases, a non-zero embedding row mean."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.3 * noise)
        elif name.endswith("bias"):
            p.copy_(0.3 * noise if "norm" in name else 0.1 * noise)
        elif "embed" in name and p.dim() == 2:
            p.add_(0.05 + 0.02 * torch.randn(p.shape[0], 1, generator=g))


def new_model(family: str, *, vocab_size: int, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A randomly initialised, perturbed tiny model of ``family`` (transformers' own class, or kept's port of a
    remote-code family's published modeling code), float32, eval mode."""
    from kept.convert.families import FAMILIES

    kwargs = {**TINY[family], **overrides, "vocab_size": vocab_size}
    torch.manual_seed(seed)
    if family in CLASSES:
        import transformers

        cfg_cls, model_cls = (getattr(transformers, n) for n in CLASSES[family])
        model = model_cls(cfg_cls(**kwargs))
    else:
        fam = FAMILIES[family]
        if fam.runtime.model_class is not None:  # a remote-code family: kept's plain-PyTorch port
            module, name = fam.runtime.model_class.split(":")
            model_cls = getattr(importlib.import_module(module), name)
            model = model_cls(model_cls.config_class(**kwargs))
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fam.model_types[0], **kwargs))
    model = model.float().eval()
    perturb(model, seed=seed)
    return model


def write_checkpoint(model: torch.nn.Module, directory: Path, *, tokenizer_dir: Path | None = None) -> Path:
    """``save_pretrained`` (safetensors) plus the BPE tokenizer files of ``tokenizer_dir``."""
    import shutil

    model.save_pretrained(directory)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tokenizer_dir / name, directory / name)
    return directory


def make_checkpoint(directory: Path, family: str, *, seed: int = 0, **overrides: Any) -> Path:
    """A tiny perturbed checkpoint of ``family`` with its tokenizer, in ``directory``."""
    vocab = train_bpe(directory)
    return write_checkpoint(new_model(family, vocab_size=vocab, seed=seed, **overrides), directory)
