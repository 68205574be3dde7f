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
from kept.train.objectives import TeacherTarget, TopKTarget, chunked_head_loss, teacher_outputs


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
                    hidden = student.model(input_ids=ids, use_cache=False).last_hidden_state
                    if cache is not None:
                        i, lp, lr = cache.get(idx, length=self.length, device=self.device)
                        target: Any = TopKTarget(i.reshape(-1, i.shape[-1]), lp.reshape(-1, lp.shape[-1]),
                                                 lr.reshape(-1), temperature=t)
                    else:
                        out = teacher_outputs(teacher, ids, objective="xkd_z")
                        th = out["hidden"]
                        target = TeacherTarget(th.reshape(-1, th.shape[-1]), out["weight"], temperature=t)
                n = ids.numel()
                kl = chunked_head_loss(hidden, student.lm_head.weight, target, chunk=self.cfg.kl_chunk_size,
                                       normalizer=1.0, recompute=True)
                total += float(kl) / (t**2)
                tokens += n
        finally:
            student.train(was_training)
        return total / max(tokens, 1)
