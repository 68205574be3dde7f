"""Load any model of the grid (a teacher of any family, a converted or trained Llama student) the same way."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from kept.errors import CheckpointError
from kept.orion import DTYPES, load_teacher


def model_type(directory: str | Path) -> str:
    """``model_type`` from a checkpoint's config.json."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing config.json")
    try:
        return json.loads(path.read_text())["model_type"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot read model_type ({exc})") from exc


def load_model(
    directory: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """Orion directories run on the StableLm teacher runtime; anything else loads with stock transformers
    classes and ``trust_remote_code=False``."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    if model_type(directory) == "orion":
        return load_teacher(directory, dtype=dtype, device=device)
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype if dtype is not None else "auto", trust_remote_code=False
    )
    return model.to(device).eval()


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer of a checkpoint. Orion directories carry only a SentencePiece model and a
    remote-code tokenizer class, so their tokenizer is rebuilt from ``tokenizer.model`` with stock classes."""
    from kept.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(directory)


def kv_bytes_per_token(directory: str | Path, *, tokens: int = 256, dtype: str | torch.dtype | None = None) -> float:
    """KV-cache bytes per token, measured: the bytes of the keys and values in transformers' cache after one forward
    of ``tokens`` random tokens (every layer), over ``tokens``; in ``dtype`` (None: the checkpoint's own)."""
    model = load_model(directory, dtype=dtype)
    ids = torch.randint(3, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) / tokens
