"""Stop at parity: the held-out measure that lets a run end once the student has recovered enough of the teacher.

The measure is the per-token KL(teacher || student) of the XKD-z objective (at the run's temperature) on held-out
sequences of the training corpus: its last ``stop_sequences`` sequences, which the batch schedule never serves when
the check is on (:class:`kept.train.data.BatchSchedule`'s ``limit``). It needs only the two models (or the teacher's
top-k cache) and the packed corpus, nothing of the source family, so every family the converter supports can use
it. A run stops after the first check (every ``stop_every`` steps) at which the KL is at or below the target:
``stop_kl`` (absolute, nats/token) or ``stop_kl_share`` times the KL before the first step, whichever is larger.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kept.errors import ConfigError
from kept.train.config import TrainConfig
from kept.train.data import PackedCorpus
from kept.train.objectives import (TeacherTarget, TopKTarget, chunked_head_loss, decoder, head_inputs,
                                   teacher_outputs)


def heldout_indices(num_sequences: int, count: int, *, where: str) -> np.ndarray:
    """Corpus indices of the held-out tail (``count`` last sequences); at least one sequence must stay for
    training."""
    if count >= num_sequences:
        raise ConfigError(f"train config: key 'stop_sequences' = {count}: {where} holds only {num_sequences} "
                          "sequences; keep at least one for training")
    return np.arange(num_sequences - count, num_sequences, dtype=np.int64)


def parity_target(cfg: TrainConfig, kl0: float) -> float:
    """The held-out KL at or below which the run stops: the larger of ``stop_kl`` and ``stop_kl_share * kl0``."""
    targets = [t for t in (cfg.stop_kl, None if cfg.stop_kl_share is None else cfg.stop_kl_share * kl0)
               if t is not None]
    return max(targets)


class ParityCheck:
    """Measures the held-out KL of the student; every rank measures the same sequences, so all ranks take the
    same decision without communicating."""

    def __init__(self, cfg: TrainConfig, corpus: PackedCorpus, *, length: int, device: torch.device) -> None:
        self.cfg = cfg
        self.corpus = corpus
        self.length = length
        self.device = device
        self.indices = heldout_indices(len(corpus), cfg.stop_sequences, where=str(cfg.corpus))

    @torch.no_grad()
    def measure(self, student: nn.Module, *, teacher: nn.Module | None, cache: Any, autocast: Any) -> float:
        """Mean per-token KL(teacher || student) over the held-out sequences (divided by T^2, like the log's
        ``kl``)."""
        was_training = student.training
        student.eval()
        total, tokens = 0.0, 0
        t = self.cfg.temperature
        try:
            for start in range(0, len(self.indices), self.cfg.batch_size):
                idx = self.indices[start : start + self.cfg.batch_size]
                ids = self.corpus.get(idx, length=self.length).to(self.device)
                with autocast():
                    out_s = decoder(student)(input_ids=ids, use_cache=False)
                    hidden, weight = head_inputs(student, out_s.last_hidden_state)
                    if cache is not None:
                        i, lp, lr = cache.get(idx, length=self.length, device=self.device)
                        target: Any = TopKTarget(i.reshape(-1, i.shape[-1]), lp.reshape(-1, lp.shape[-1]),
                                                 lr.reshape(-1), temperature=t)
                    else:
                        out = teacher_outputs(teacher, ids, objective="xkd_z")
                        th = out["hidden"]
                        target = TeacherTarget(th.reshape(-1, th.shape[-1]), out["weight"], temperature=t)
                n = ids.numel()
                kl = chunked_head_loss(hidden, weight, target, chunk=self.cfg.kl_chunk_size,
                                       normalizer=1.0, recompute=True)
                total += float(kl) / (t**2)
                tokens += n
        finally:
            student.train(was_training)
        return total / max(tokens, 1)


# ---- tokens to parity over seeds (bench.bench_recovery) -------------------------------------------------------


def first_reaching(curve: dict[int, float], target: float) -> int | None:
    """The first step (smallest key) whose value is at least ``target``; None when no step reaches it."""
    return next((step for step in sorted(curve) if curve[step] >= target), None)


# two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..10 (beyond: 1.96 is within 12 % of the exact value)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_interval(values: list[float | None], *, ceiling: float) -> dict[str, Any]:
    """Mean and a two-sided 95 % Student-t interval over seeds of a quantity that may be censored: a seed whose
    run never reached parity (None) counts at ``ceiling``, so the mean and the bounds are then lower bounds
    (``censored`` > 0: the true tokens-to-parity is at least that). One seed gives no interval (bounds nan)."""
    if not values:
        raise ValueError("seed_interval: no seeds")
    x = np.array([ceiling if v is None else float(v) for v in values], dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n > 1:
        t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
        half = float(t * x.std(ddof=1) / np.sqrt(n))
        lo, hi = mean - half, mean + half
    else:
        lo = hi = float("nan")
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "censored": sum(v is None for v in values)}


def format_interval(s: dict[str, Any]) -> str:
    """``mean [lo, hi]`` in tokens, prefixed with ``>=`` when some seeds never reached parity."""
    prefix = ">= " if s["censored"] else ""
    if s["n"] < 2:
        return f"{prefix}{s['mean']:.0f} (1 seed)"
    return (f"{prefix}{s['mean']:.0f} [{max(s['lo'], 0):.0f}, {s['hi']:.0f}] ({s['n']} seeds"
            + (f", {s['censored']} never reached" if s["censored"] else "") + ")")
