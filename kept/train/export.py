"""Writing trained students: stock Llama (final model and snapshots) or Orion format (toy teachers)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kept.atomic import MARKER, atomic_dir
from kept.card import write_model_card
from kept.errors import CheckpointError

# Files of the student dir that describe the model rather than hold weights: copied next to the trained weights.
# (config.json and generation_config.json are rewritten by save_pretrained; fidelity.* describe the init only;
# README.md, the model card, is written anew for the trained model.)
_NOT_COPIED = {"config.json", "generation_config.json", "fidelity.json", "fidelity.md", "README.md"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth")


def side_files(student_dir: str | Path) -> list[Path]:
    """Tokenizer files, chat template, conversion.json ... of the student dir."""
    out = []
    for path in sorted(Path(student_dir).iterdir()):
        if path.is_file() and path.name not in _NOT_COPIED and not path.name.endswith(_WEIGHT_SUFFIXES) \
                and not path.name.startswith("."):
            out.append(path)
    return out


def shard_size(state: dict[str, torch.Tensor], num_shards: int) -> int:
    """A ``max_shard_size`` (bytes) for save_pretrained that gives about ``num_shards`` shards."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    largest = max(t.numel() * t.element_size() for t in state.values())
    return max(largest, -(-total // max(1, num_shards))) + 1


def export_model(model: nn.Module, out_dir: str | Path, *, student_dir: str | Path, fmt: str,
                 state_dict: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                 num_shards: int = 2, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights from ``state_dict`` if given) to ``out_dir`` atomically.

    fmt "llama": ``save_pretrained`` safetensors (loads with stock transformers, ``trust_remote_code=False``) plus the
    student dir's tokenizer files and conversion.json, and a model card (README.md, :mod:`kept.card`). fmt "orion":
    :func:`kept.orion.save_orion_checkpoint` with the student's ``tokenizer.model`` and chat format. fmt "source":
    the model's own class's ``save_pretrained`` (a toy teacher of an HF family: config.json with its ``model_type``,
    safetensors) plus the student dir's tokenizer files, without a model card (a card describes a conversion).
    ``extra`` is written as ``training.json``.
    """
    student_dir = Path(student_dir)
    state = state_dict if state_dict is not None else model.state_dict()
    state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in state.items()}
    if fmt == "orion":
        from kept.orion import save_orion_checkpoint

        tok = student_dir / "tokenizer.model"
        if not tok.is_file():
            raise CheckpointError(f"{tok}: missing; an Orion export carries the student's tokenizer.model")
        chat = _chat_format(student_dir) == "orion"
        holder = _with_state(model, state)
        out = save_orion_checkpoint(holder, out_dir, tokenizer_model=tok, num_shards=num_shards, chat=chat)
        if extra:
            (out / "training.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
        return out
    with atomic_dir(out_dir, inputs=[student_dir]) as tmp:
        cfg = model.config
        if dtype is not None:
            cfg.dtype = dtype
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True,
                              max_shard_size=shard_size(state, num_shards))
        for path in side_files(student_dir):
            shutil.copyfile(path, tmp / path.name)
        if extra:
            (tmp / "training.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
        if fmt == "llama":
            write_model_card(tmp, fidelity_dir=student_dir)  # fidelity of the conversion it was trained from
        for path in tmp.iterdir():
            os.chmod(path, 0o644)  # save_pretrained writes 0600
    return Path(out_dir)


def _chat_format(student_dir: Path) -> str | None:
    path = student_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("chat_format")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` itself if it already holds ``state``, else a CPU copy loaded with it."""
    own = model.state_dict()
    if all(own[k].data_ptr() == v.data_ptr() for k, v in state.items() if k in own) and set(own) == set(state):
        return model
    import copy

    clone = copy.deepcopy(model).to("cpu")
    clone.load_state_dict(state, strict=True)
    return clone


def link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst`` with hard links (a copy where the file system has none), atomically."""
    with atomic_dir(dst) as tmp:
        for path in src.iterdir():
            if path.is_file() and path.name != MARKER:  # atomic_dir writes its own
                try:
                    os.link(path, tmp / path.name)
                except OSError:
                    shutil.copy2(path, tmp / path.name)
