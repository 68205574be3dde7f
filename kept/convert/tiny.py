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
    "ministral": dict(_GQA, head_dim=16, sliding_window=128),
    "qwen2": dict(_GQA, use_sliding_window=False),
    "internlm3": dict(_GQA, qkv_bias=True, bias=True),
    "qwen3": dict(_GQA, head_dim=16),
    "phi3": dict(_GQA, partial_rotary_factor=0.75, original_max_position_embeddings=128, pad_token_id=1),
    "gemma": dict(_GQA, head_dim=16, tie_word_embeddings=True, pad_token_id=1),
    "gemma2": dict(_GQA, head_dim=16, query_pre_attn_scalar=24, sliding_window=8, tie_word_embeddings=True,
                   layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, pad_token_id=1),
    "gemma3_text": dict(_GQA, head_dim=16, query_pre_attn_scalar=24, sliding_window=8, tie_word_embeddings=True,
                        layer_types=["sliding_attention", "full_attention"], pad_token_id=1,
                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "vaultgemma": dict(_GQA, head_dim=16, query_pre_attn_scalar=24, sliding_window=8, tie_word_embeddings=True,
                       layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, pad_token_id=1),
    "granite": dict(_GQA, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125,
                    logits_scaling=8.0, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "hyperclovax": dict(_GQA, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
                        logits_scaling=0.125, use_post_norm=True),
    "starcoder2": dict(_GQA, use_bias=True, tie_word_embeddings=True, sliding_window=None, pad_token_id=1),
    "nemotron": dict(_GQA, head_dim=16, partial_rotary_factor=0.5, attention_bias=True, mlp_bias=True,
                     pad_token_id=1),
    "falcon": dict(_SMALL, ffn_hidden_size=128, bias=True, tie_word_embeddings=True, multi_query=True,
                   parallel_attn=True, new_decoder_architecture=False, pad_token_id=1),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, n_inner=128, bos_token_id=0,
                 eos_token_id=2, tie_word_embeddings=False),
    "cohere": dict(_GQA, attention_bias=True, tie_word_embeddings=True, pad_token_id=1),
    "cohere2": dict(_GQA, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                    tie_word_embeddings=True, pad_token_id=1),
    "olmo2": dict(_GQA, pad_token_id=1),
    "olmo3": dict(_GQA, sliding_window=8, layer_types=["sliding_attention", "full_attention"], pad_token_id=1),
    "persimmon": dict(_SMALL, partial_rotary_factor=0.5, qk_layernorm=True, pad_token_id=1),
    "exaone": dict(_GQA, pad_token_id=1),
    "exaone4": dict(_GQA, sliding_window=8, layer_types=["sliding_attention", "full_attention"], pad_token_id=1),
    "helium": dict(_GQA, head_dim=16, attention_bias=True, mlp_bias=True, pad_token_id=1),
    "seed_oss": dict(_GQA, attention_bias=True, attention_out_bias=True, mlp_bias=True, pad_token_id=1),
    "arcee": dict(_GQA, mlp_bias=True, pad_token_id=1),
    "smollm3": dict(_GQA, no_rope_layers=[1, 0], tie_word_embeddings=True, pad_token_id=1),
    "glm": dict(_GQA, head_dim=16, partial_rotary_factor=0.5, attention_bias=True, pad_token_id=1),
    "glm4": dict(_GQA, head_dim=16, partial_rotary_factor=0.5, attention_bias=True, pad_token_id=1),
    "apertus": dict(_GQA, pad_token_id=1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "hunyuan_v1_dense": dict(_GQA, head_dim=16, pad_token_id=1),
    "ernie4_5": dict(_GQA, use_bias=True, tie_word_embeddings=True, pad_token_id=1),
    "internlm2": dict(_GQA, bias=True, rope_theta=1000000.0, bos_token_id=1, pad_token_id=0),
    "baichuan": dict(_SMALL, num_key_value_heads=None, bos_token_id=1, pad_token_id=0),
}
# The zoo sweep (bench/bench_zoo.py -> docs/zoo.md): every family, and the layouts that change its mapping.
ZOO: list[tuple[str, dict[str, Any], str]] = [
    ("olmo", {}, "olmo"), ("stablelm", {}, "stablelm"),
    ("gpt_neox", {}, "gpt_neox (Pythia: parallel)"), ("phi", {}, "phi"), ("llama", {}, "llama"),
    ("internlm3", {}, "internlm3"), ("mistral", {}, "mistral"), ("ministral", {}, "ministral"),
    ("qwen2", {}, "qwen2"), ("qwen3", {}, "qwen3"), ("phi3", {}, "phi3 (partial rotary 0.75)"),
    ("gemma", {}, "gemma"), ("gemma2", {}, "gemma2"), ("gemma3_text", {}, "gemma3_text"),
    ("vaultgemma", {}, "vaultgemma"), ("granite", {}, "granite"), ("hyperclovax", {}, "hyperclovax"),
    ("starcoder2", {}, "starcoder2"), ("nemotron", {}, "nemotron"), ("falcon", {}, "falcon (7B: multi-query)"),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, "falcon (40B: grouped QKV)"),
    ("gptj", {}, "gptj"), ("cohere", {}, "cohere"), ("cohere2", {}, "cohere2"), ("olmo2", {}, "olmo2"),
    ("olmo3", {}, "olmo3"), ("persimmon", {}, "persimmon"), ("exaone", {}, "exaone (3.x)"), ("exaone4", {}, "exaone4"),
    ("helium", {}, "helium"), ("seed_oss", {}, "seed_oss"), ("arcee", {}, "arcee"), ("smollm3", {}, "smollm3"),
    ("glm", {}, "glm"), ("glm4", {}, "glm4"), ("apertus", {}, "apertus"), ("hunyuan_v1_dense", {}, "hunyuan_v1_dense"),
    ("ernie4_5", {}, "ernie4_5"), ("internlm2", {}, "internlm2 (remote code)"),
    ("baichuan", {}, "baichuan (Baichuan2-7B, remote code)"),
]
# Remote-code families ship a SentencePiece tokenizer.model with their specials as user-defined pieces, and a
# tokenizer_config.json naming them (InternLM2-chat's layout).
SP_SPECIALS = ("<|im_start|>", "<|im_end|>", "[UNUSED_TOKEN_145]")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
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


QK_WEIGHTS = ("q_proj", "k_proj", "qkv", "query_key_value", "wqkv", "W_pack")


@torch.no_grad()
def perturb(model: torch.nn.Module, *, seed: int = 0) -> None:
    """Random norm gains and biases, random linear biases, a non-zero embedding row mean, and q/k projections
    scaled up (x8) so that attention is far from uniform: a wrong q.k scale or RoPE layout then shows."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.dim() == 2 and any(k in name for k in QK_WEIGHTS):
            p.mul_(8.0)
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
            model = model_cls(model_cls.config_class.from_dict(kwargs))
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


def train_sentencepiece(directory: Path, *, vocab_size: int = 400) -> int:
    """A SentencePiece BPE ``tokenizer.model`` (<unk>=0, <s>=1, </s>=2, byte fallback, :data:`SP_SPECIALS` as
    user-defined pieces) and a ``tokenizer_config.json`` marking those specials and carrying a chat template, as
    the remote-code families ship them; returns its vocabulary size."""
    import io
    import json

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT * 20), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, user_defined_symbols=list(SP_SPECIALS), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, num_threads=1, hard_vocab_limit=False,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    added = {str(sp.piece_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                      "normalized": False, "single_word": False} for t in SP_SPECIALS}
    cfg = {"tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.py", None]},
           "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "added_tokens_decoder": added,
           "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return sp.get_piece_size()


def make_checkpoint(directory: Path, family: str, *, seed: int = 0, **overrides: Any) -> Path:
    """A tiny perturbed checkpoint of ``family`` with its tokenizer, in ``directory``."""
    from kept.convert.families import FAMILIES

    if FAMILIES[family].tokenizer == "sentencepiece" and family != "orion":
        vocab = train_sentencepiece(directory)
    else:
        vocab = train_bpe(directory)
    return write_checkpoint(new_model(family, vocab_size=vocab, seed=seed, **overrides), directory)
