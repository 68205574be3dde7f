"""The Appendix-A pilot: learn only the RMSNorm weights, from a random start, against the frozen teacher, and
follow the cosine similarity of each learned weight vector g to the teacher's LayerNorm weight gamma."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kept.atomic import atomic_file
from kept.checkpoint import TensorReader
from kept.train.config import TrainConfig
from kept.train.trainer import FINAL_NORM, fit, norm_weight_names


@dataclass
class PilotConfig:
    """Settings of :func:`run_pilot` (the training settings it does not list are TrainConfig defaults)."""

    student: str  # converted stock-Llama dir (its norm weights are overwritten by the random start)
    teacher: str  # Orion teacher dir (frozen; gamma is read from it)
    corpus: str
    output: str  # cosine.jsonl, written atomically
    work_dir: str  # train_log.jsonl of the pilot run
    objective: str = "xkd_z"  # "xkd_z" trains all 2L+1 norms; "xkd_h" leaves the final norm without a signal
    steps: int = 200
    batch_size: int = 8
    lr: float = 0.05  # only 2L+1 vectors learn: a larger rate than full training
    warmup_steps: int = 10
    # random start g ~ N(init_mean, init_std^2), independent of gamma. A zero-mean start is sign-ambiguous: on the
    # pretrained toy teacher XKD-h drove the post-attention sites to g ~ -gamma (cos -0.98..-0.99, loss ~8e-4)
    # and the input sites to +gamma; a positive random scale (the default) converges toward +gamma.
    init_mean: float = 1.0
    init_std: float = 0.5
    seed: int = 0
    log_every: int = 10
    kl_chunk_size: int = 1024
    max_length: int | None = None
    model_dtype: str = "float32"
    teacher_dtype: str = "float32"
    mixed_precision: str = "no"
    # recompute each layer in the backward: at Orion-14B size and T = 4096 the pilot holds the bf16 student and
    # teacher (27 GiB each); without it the activations (~37 GiB) push it past 80 GB (docs/memory-plan.md)
    gradient_checkpointing: bool = False
    progress: bool = True


def teacher_gammas(teacher_dir: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The teacher's LayerNorm weights under the student's norm names (Orion uses the same names)."""
    with TensorReader(teacher_dir) as reader:
        return {n: reader.get(n).double() for n in names}


def cosines(student: nn.Module, gammas: dict[str, torch.Tensor]) -> list[float]:
    params = dict(student.named_parameters())
    return [float(torch.nn.functional.cosine_similarity(params[n].detach().double().cpu(), g, dim=0))
            for n, g in gammas.items()]


def run_pilot(cfg: PilotConfig) -> dict[str, Any]:
    """Train the norm weights only and write ``{"step", "cos_mean", "cos": [per site]}`` lines to ``cfg.output``
    (site order: layer 0 input, layer 0 post-attention, ..., final norm). Returns a summary."""
    train_cfg = TrainConfig(
        objective=cfg.objective, student=cfg.student, teacher=cfg.teacher, corpus=cfg.corpus,
        output=str(Path(cfg.work_dir) / "unused-model"), work_dir=cfg.work_dir, steps=cfg.steps,
        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=0.0, seed=cfg.seed,
        log_every=cfg.log_every, kl_chunk_size=cfg.kl_chunk_size, max_length=cfg.max_length,
        model_dtype=cfg.model_dtype, teacher_dtype=cfg.teacher_dtype, mixed_precision=cfg.mixed_precision,
        gradient_checkpointing=cfg.gradient_checkpointing, trainable="norms", progress=cfg.progress,
    )
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    def prepare(student: nn.Module) -> None:
        names = norm_weight_names(student)
        if cfg.objective == "xkd_h":
            names.remove(FINAL_NORM)  # no gradient reaches it under the hidden-state objective
        state["gammas"] = teacher_gammas(cfg.teacher, names)
        g = torch.Generator().manual_seed(cfg.seed)
        params = dict(student.named_parameters())
        with torch.no_grad():
            for n in names:
                p = params[n]
                p.copy_(cfg.init_mean + cfg.init_std * torch.randn(p.shape, generator=g, dtype=torch.float64))
        rows.append(_row(0, cosines(student, state["gammas"])))

    def on_log(step: int, student: nn.Module) -> dict[str, Any]:
        row = _row(step, cosines(student, state["gammas"]))
        rows.append(row)
        return {"cos_mean": row["cos_mean"]}

    summary = fit(train_cfg, prepare_student=prepare, on_log=on_log, export=False)
    with atomic_file(cfg.output, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    sites = list(state["gammas"])
    return {"sites": sites, "cos_mean_start": rows[0]["cos_mean"], "cos_mean_end": rows[-1]["cos_mean"],
            "final_loss": summary["final_loss"], "steps": cfg.steps, "output": cfg.output}


def _row(step: int, cos: list[float]) -> dict[str, Any]:
    return {"step": step, "cos_mean": sum(cos) / len(cos), "cos": cos}
