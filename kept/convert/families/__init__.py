"""Source families, one module of data each (:class:`~kept.convert.families.base.Family`); :func:`detect` picks a
checkpoint's family from its config.json (``model_type``, else ``architectures``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families import gpt_neox, llama, mistral, olmo, orion, phi, qwen2, stablelm
from kept.convert.families.base import Arch, Family, Runtime, read_config
from kept.errors import CheckpointError

FAMILIES: dict[str, Family] = {f.name: f for f in (
    orion.FAMILY, olmo.FAMILY, stablelm.FAMILY, gpt_neox.FAMILY, phi.FAMILY,
    llama.FAMILY, mistral.FAMILY, mistral.MINISTRAL, qwen2.FAMILY,
)}
_BY_ARCH = {"OrionForCausalLM": "orion", **{f.hf_class: f.name for f in FAMILIES.values() if f.name != "orion"},
            **{a: f.name for f in FAMILIES.values() for a in f.architectures}}

__all__ = ["Arch", "Family", "Runtime", "FAMILIES", "check_family", "detect", "read_source"]


def detect(cfg: dict[str, Any], path: str | Path) -> Family:
    """The family of a config.json, by ``model_type`` (else ``architectures``); anything else is refused with
    one line naming it and the supported families."""
    kind = cfg.get("model_type")
    for fam in FAMILIES.values():
        if kind in fam.model_types:
            return fam
    for arch in cfg.get("architectures") or []:
        if arch in _BY_ARCH:
            return FAMILIES[_BY_ARCH[arch]]
    raise CheckpointError(
        f"{path}: model_type {kind!r} (architectures {cfg.get('architectures')!r}) is not a supported source "
        f"family; supported: {', '.join(FAMILIES)}"
    )


def read_source(directory: str | Path) -> tuple[Family, Arch, dict[str, Any]]:
    """A checkpoint directory's family, its normalised :class:`Arch` and its raw config.json."""
    path = Path(directory) / "config.json"
    cfg = read_config(directory)
    fam = detect(cfg, path)
    return fam, fam.read_arch(cfg, path), cfg


def check_family(directory: str | Path, expected: str | None, *, key: str) -> Family:
    """The detected family of ``directory``; with ``expected`` (a configured family, named by ``key``) a
    mismatch is refused with one line naming both."""
    fam = detect(read_config(directory), Path(directory) / "config.json")
    if expected is not None and fam.name != expected:
        raise CheckpointError(f"{key}: {expected!r}, but {directory}/config.json is a {fam.name!r} checkpoint")
    return fam
