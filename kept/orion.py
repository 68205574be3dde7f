"""Orion: config, on-disk format, and a teacher runtime built from transformers' own classes.

Orion-14B is the Llama decoder with LayerNorm (weight + bias) at every norm site. transformers'
``StableLmForCausalLM`` with full rotary, sequential residual and no qkv bias computes exactly that and uses
exactly Orion's tensor names, so Orion weights load into it with no renaming and no remote code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kept.atomic import atomic_dir
from kept.checkpoint import TensorReader
from kept.errors import CheckpointError

if TYPE_CHECKING:  # transformers' model code is imported where it is used: the converter does not need it
    from transformers import StableLmConfig, StableLmForCausalLM

# Keys an Orion config.json must carry for us to rebuild the model.
REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_orion_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``config.json`` of an Orion checkpoint directory."""
    from kept.convert.families.base import read_config

    cfg = read_config(directory)
    path = Path(directory) / "config.json"
    return validate_orion_config(cfg, path)


def validate_orion_config(cfg: dict[str, Any], path: str | Path = "config.json") -> dict[str, Any]:
    """Check an Orion config.json's contents (``path`` names it in errors)."""
    if cfg.get("model_type") != "orion":
        raise CheckpointError(f"{path}: model_type is {cfg.get('model_type')!r}, expected 'orion'")
    for key in REQUIRED_KEYS:
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise CheckpointError(f"{path}: key {key!r} must be a positive integer, found {cfg.get(key)!r}")
    heads = cfg["num_attention_heads"]
    if cfg["hidden_size"] % heads:
        raise CheckpointError(
            f"{path}: hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {heads}"
        )
    kv = cfg.get("num_key_value_heads", heads)
    if kv != heads:
        raise CheckpointError(f"{path}: num_key_value_heads {kv} != num_attention_heads {heads} (Orion is MHA)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: hidden_act {cfg.get('hidden_act')!r} unsupported (Orion uses 'silu')")
    if cfg.get("tie_word_embeddings", False):
        raise CheckpointError(f"{path}: tie_word_embeddings=true unsupported (Orion does not tie)")
    return cfg


def stablelm_config(cfg: dict[str, Any]) -> "StableLmConfig":
    """The StableLm config that computes exactly the Orion forward pass of ``cfg``."""
    from transformers import StableLmConfig

    return StableLmConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        hidden_act="silu",
        max_position_embeddings=cfg["max_position_embeddings"],
        layer_norm_eps=cfg.get("rms_norm_eps", 1e-5),  # Orion's key says "rms" but the module is LayerNorm
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(cfg.get("rope_theta", 10000.0)),
            "partial_rotary_factor": 1.0,  # Orion rotates the whole head dim
        },
        use_qkv_bias=False,
        qk_layernorm=False,
        use_parallel_residual=False,  # h = x + attn(LN1 x); out = h + mlp(LN2 h)
        tie_word_embeddings=False,
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 0),
        initializer_range=cfg.get("initializer_range", 0.02),
    )


def new_orion_model(cfg: dict[str, Any], *, dtype: torch.dtype = torch.float32) -> "StableLmForCausalLM":
    """A randomly initialised model with Orion's computation and tensor names."""
    from transformers import StableLmForCausalLM

    model = StableLmForCausalLM(stablelm_config(cfg))
    return model.to(dtype)


def load_teacher(
    directory: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> "StableLmForCausalLM":
    """Load an Orion checkpoint into the StableLm runtime, one tensor at a time, names unchanged.

    ``dtype=None`` keeps the dtype of the checkpoint's config (``torch_dtype``), float32 if absent.
    """
    from transformers import StableLmForCausalLM

    directory = Path(directory)
    cfg = read_orion_config(directory)
    if dtype is None:
        dtype = DTYPES.get(str(cfg.get("torch_dtype", "float32")), torch.float32)
    with torch.device("meta"):
        model = StableLmForCausalLM(stablelm_config(cfg))
    expected = dict(model.state_dict())
    seen: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    with TensorReader(directory) as reader:
        for name, tensor in reader.iter_by_shard():
            if name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope_theta
            if name not in expected:
                raise CheckpointError(f"{directory}: unexpected tensor {name!r} for an Orion model")
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise CheckpointError(
                    f"{directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(expected[name].shape)}"
                )
            state[name] = tensor.to(device=device, dtype=dtype, copy=True)
            seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{directory}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, assign=True, strict=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config).to(device)  # buffers were on meta
    return model.eval()


def orion_config_dict(model: "StableLmForCausalLM", **extra: Any) -> dict[str, Any]:
    """Orion's config.json for a StableLm-runtime model (the inverse of :func:`stablelm_config`)."""
    c = model.config
    rope = c.rope_parameters or {}
    cfg = {
        "architectures": ["OrionForCausalLM"],
        "model_type": "orion",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "max_sequence_length": c.max_position_embeddings,
        "rms_norm_eps": c.layer_norm_eps,
        "rope_theta": float(rope.get("rope_theta", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "initializer_range": c.initializer_range,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    cfg.update(extra)
    return cfg


def save_orion_checkpoint(
    model: "StableLmForCausalLM",
    out_dir: str | Path,
    *,
    tokenizer_model: str | Path,
    num_shards: int = 2,
    chat: bool = False,
) -> Path:
    """Write ``model`` in Orion's on-disk format, as the hub ships it.

    ``config.json`` (model_type orion), ``pytorch_model-0000i-of-0000n.bin`` pickled shards with
    ``pytorch_model.bin.index.json``, the SentencePiece ``tokenizer.model``, ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``generation_config.json``. Written atomically.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    num_shards = max(1, min(num_shards, len(names)))
    per = -(-len(names) // num_shards)
    with atomic_dir(out_dir) as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for i in range(num_shards):
            chunk = names[i * per : (i + 1) * per]
            fname = f"pytorch_model-{i + 1:05d}-of-{num_shards:05d}.bin"
            torch.save({k: state[k] for k in chunk}, tmp / fname)
            for k in chunk:
                weight_map[k] = fname
                total += state[k].numel() * state[k].element_size()
        (tmp / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
        )
        cfg = orion_config_dict(model)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
        tok_cfg: dict[str, Any] = {
            "tokenizer_class": "OrionTokenizer",
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "model_max_length": cfg["max_position_embeddings"],
        }
        if chat:
            tok_cfg["chat_format"] = "orion"  # <s>Human: {q}\n\nAssistant: </s>{answer}</s>
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
            + "\n"
        )
        gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
               "pad_token_id": cfg["pad_token_id"], "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out_dir
