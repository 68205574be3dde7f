"""Source families, one module of data each (:class:`~kept.convert.families.base.Family`); :func:`detect` picks a
checkpoint's family from its config.json (``model_type``, else ``architectures``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kept.convert.families import baichuan, cohere, exaone, falcon, gemma, gemma2, glm, gpt_neox, gptj, granite
from kept.convert.families import internlm2, llama, llama_kin, mistral, nemotron, olmo, olmo2, orion, persimmon, phi
from kept.convert.families import phi3, qk_norm
from kept.convert.families import qwen2, qwen3, stablelm, starcoder2
from kept.convert.families.base import Arch, Family, Runtime, read_config
from kept.errors import CheckpointError

FAMILIES: dict[str, Family] = {f.name: f for f in (
    orion.FAMILY, olmo.FAMILY, stablelm.FAMILY, gpt_neox.FAMILY, phi.FAMILY,
    llama.FAMILY, llama.INTERNLM3, mistral.FAMILY, mistral.MINISTRAL, qwen2.FAMILY, qwen3.FAMILY, phi3.FAMILY,
    gemma.FAMILY, gemma2.FAMILY, gemma2.GEMMA3, gemma.VAULTGEMMA, granite.FAMILY, granite.HYPERCLOVAX,
    starcoder2.FAMILY, nemotron.FAMILY, falcon.FAMILY, gptj.FAMILY, cohere.FAMILY, cohere.COHERE2, olmo2.FAMILY,
    olmo2.OLMO3, persimmon.FAMILY, exaone.FAMILY, exaone.EXAONE4, llama_kin.HELIUM, llama_kin.SEED_OSS,
    llama_kin.ARCEE, llama_kin.SMOLLM3, glm.FAMILY, glm.GLM4, qk_norm.APERTUS, qk_norm.HUNYUAN, llama_kin.ERNIE,
    internlm2.FAMILY, baichuan.FAMILY,
)}
_BY_ARCH: dict[str, str] = {"OrionForCausalLM": "orion"}
for _f in FAMILIES.values():  # the first family of a class name keeps it (exaone and internlm3 run as Llama)
    for _a in (_f.hf_class, *_f.architectures):
        _BY_ARCH.setdefault(_a, _f.name)
_BY_ARCH["StableLmForCausalLM"] = "stablelm"  # Orion's runtime class is StableLM's; its checkpoints say Orion
# Families whose positions stock Llama cannot hold (learned absolute, sinusoidal or ALiBi): refused with the reason.
NO_ROPE = {
    "gpt2": "learned absolute position embeddings (wpe)", "opt": "learned absolute position embeddings",
    "bloom": "ALiBi attention biases", "mpt": "ALiBi attention biases", "gpt_bigcode":
    "learned absolute position embeddings (wpe)", "gpt_neo": "learned absolute position embeddings (wpe) and local "
    "attention", "xglm": "sinusoidal absolute position embeddings", "biogpt": "learned absolute position embeddings",
}

__all__ = ["Arch", "Family", "Runtime", "FAMILIES", "check_family", "detect", "read_source"]


def detect(cfg: dict[str, Any], path: str | Path) -> Family:
    """The family of a config.json, by ``model_type`` (else ``architectures``); anything else is refused with
    one line naming it and the supported families."""
    kind = cfg.get("model_type")
    if kind in NO_ROPE:
        raise CheckpointError(f"{path}: model_type {kind!r} encodes positions with {NO_ROPE[kind]}; stock Llama holds "
                              "only rotary positions, so it cannot be converted")
    for fam in FAMILIES.values():
        if kind in fam.model_types:
            return fam
    for arch in cfg.get("architectures") or []:
        if arch in _BY_ARCH:
            return FAMILIES[_BY_ARCH[arch]]
    if cfg.get("auto_map"):
        raise CheckpointError(
            f"{path}: model_type {kind!r} is defined by remote code (auto_map {sorted(cfg['auto_map'])}), which kept "
            f"never runs, and kept has no weights map for it; supported: {', '.join(FAMILIES)}"
        )
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
