"""Held-out loss on a teacher's pretraining mixture: the regime check's second measurement.

A teacher has converged on its pretraining distribution when further training on the transfer corpus (the
``Teacher + UT`` control, ``ut@teacher``) cannot lower its loss on that distribution. The world stage writes fresh
renderings of every domain (``text/heldout/{domain}.jsonl``: same facts and training-side items, documents no
teacher trains on); this module packs them in the teacher recipe's own mixture and sequence length
(:func:`kept.world.pretrain.pack_mixture`) and reports a model's mean next-token loss per sequence, so the control
and the teacher pair up sequence by sequence in the report (kept.report.regime).

Summary (``mixture_loss.json``): ``{"model", "variant", "nll" (mean per token), "per_sequence" (mean per token of
each sequence), "sequences", "seq_len", "mixture", "tokens"}``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kept.atomic import write_json
from kept.errors import ConfigError


@dataclass
class MixtureLossConfig:
    """One model's loss on the held-out pretraining mixture of its variant's teacher."""

    model: str  # model directory (the teacher's own family layout, or stock Llama)
    world: str  # world directory (text/heldout/{domain}.jsonl)
    tokenizer: str  # the world's tokenizer.model (the teachers' own)
    output: str  # mixture_loss.json
    mixture: dict[str, float] = field(default_factory=dict)  # domain -> share: the teacher recipe's
    seq_len: int = 512  # the teacher recipe's sequence length
    sequences: int = 64  # held-out sequences packed and scored
    seed: int = 0
    model_name: str = ""
    variant: str = ""
    batch_size: int = 8
    dtype: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.mixture:
            raise ConfigError("mixture loss: the teacher recipe names no mixture")
        for key in ("seq_len", "sequences", "batch_size"):
            if getattr(self, key) < 1 or (key == "seq_len" and self.seq_len < 2):
                raise ConfigError(f"mixture loss: {key} must be positive (got {getattr(self, key)})")


@torch.inference_mode()
def sequence_losses(model: Any, rows: torch.Tensor, *, batch_size: int) -> np.ndarray:
    """Mean next-token cross-entropy of each row of ``rows`` (n, T) under ``model`` (float64, (n,))."""
    out = []
    for start in range(0, rows.shape[0], batch_size):
        ids = rows[start:start + batch_size].to(next(model.parameters()).device)  # (B, T)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        out.append(nll.mean(dim=1).double().cpu())
    return torch.cat(out).numpy()


def mixture_loss(cfg: MixtureLossConfig) -> dict[str, Any]:
    """Pack the held-out mixture, score ``cfg.model`` on it and write the summary atomically."""
    from kept.models import load_model
    from kept.train.data import PackedCorpus
    from kept.world.pretrain import pack_mixture

    text_dir = Path(cfg.world) / "text" / "heldout"
    with tempfile.TemporaryDirectory(prefix=".tmp-mixture-") as tmp:
        pack_mixture(text_dir=text_dir, tokenizer=cfg.tokenizer, mixture=cfg.mixture, seq_len=cfg.seq_len,
                     sequences=cfg.sequences, seed=cfg.seed, output=Path(tmp) / "data",
                     source="world:heldout-mixture")
        corpus = PackedCorpus(Path(tmp) / "data")
        rows = corpus.get(np.arange(len(corpus)))  # (n, T)
    model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device).eval()
    corpus_vocab = int(rows.max()) + 1
    if corpus_vocab > model.config.vocab_size:
        raise ConfigError(f"{cfg.model}: vocab_size {model.config.vocab_size} is smaller than the world "
                          f"tokenizer's ids ({corpus_vocab})")
    per_seq = sequence_losses(model, rows, batch_size=cfg.batch_size)
    summary = {"model": cfg.model_name, "variant": cfg.variant, "nll": float(per_seq.mean()),
               "per_sequence": [float(x) for x in per_seq], "sequences": int(rows.shape[0]),
               "seq_len": cfg.seq_len, "mixture": dict(cfg.mixture), "tokens": int(rows.numel())}
    write_json(cfg.output, summary)
    return summary
