"""Offline-teacher XKD-z: cache the teacher's top-k log-probs and remaining mass once, train without the teacher.

Layout of a cache dir (shards aligned with the corpus shards, one row per corpus sequence):

    manifest.json        {"top_k", "temperature", "logprob_dtype", "num_sequences", "max_length", "vocab_size",
                          "corpus_sha256", "teacher", "shards": [{"indices", "logprobs", "log_rest", "rows"}]}
    indices-00000.npy    int32   (rows, max_length, k)   token ids, by decreasing teacher probability
    logprobs-00000.npy   float16/float32 (rows, max_length, k)   teacher log-probs at the temperature
    log_rest-00000.npy   float32 (rows, max_length)   log(1 - sum of the k probs); -inf when k covers everything

Disk: rows x max_length x (k x (4 + 2 or 4) + 4) bytes; for the paper's 30K x 4096 sequences and k = 64 in float16
that is 47 GB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kept.atomic import atomic_dir, check_output
from kept.errors import CheckpointError, ConfigError
from kept.progress import Progress
from kept.train.data import PackedCorpus

LOGPROB_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class CacheConfig:
    """Settings of :func:`cache_teacher`."""

    teacher: str  # Orion teacher dir
    corpus: str  # packed corpus dir (the one training reads)
    output: str  # cache dir, written atomically
    top_k: int = 64  # tokens kept per position (the vocabulary size reproduces online XKD-z)
    temperature: float = 1.0  # must equal the training temperature
    logprob_dtype: str = "float16"
    batch_size: int = 4
    chunk_size: int = 1024  # positions per lm_head projection
    teacher_dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True


def corpus_digest(corpus: PackedCorpus) -> str:
    """Hash of the corpus manifest: ties a cache to the exact corpus it was made from."""
    return hashlib.sha256(json.dumps(corpus.manifest, sort_keys=True).encode()).hexdigest()


def cache_teacher(cfg: CacheConfig) -> dict[str, Any]:
    """Run the teacher over every corpus sequence once and write its top-k log-probs. Returns the manifest."""
    from kept.models import load_model

    if cfg.top_k < 1:
        raise ConfigError(f"cache config: key 'top_k' = {cfg.top_k}: must be >= 1")
    if cfg.logprob_dtype not in LOGPROB_DTYPES:
        raise ConfigError(f"cache config: key 'logprob_dtype' = {cfg.logprob_dtype!r}: expected {list(LOGPROB_DTYPES)}")
    if not cfg.temperature > 0:
        raise ConfigError(f"cache config: key 'temperature' = {cfg.temperature}: must be > 0")
    check_output(cfg.output, inputs=[cfg.corpus, cfg.teacher])  # before the teacher runs (kept.atomic's rule)
    corpus = PackedCorpus(cfg.corpus)
    teacher = load_model(cfg.teacher, dtype=cfg.teacher_dtype, device=cfg.device).eval()
    vocab = teacher.config.vocab_size
    corpus.check_vocab(vocab, where=cfg.teacher)
    k = min(cfg.top_k, vocab)
    length = corpus.max_length
    manifest: dict[str, Any] = {
        "top_k": k, "temperature": cfg.temperature, "logprob_dtype": cfg.logprob_dtype,
        "num_sequences": len(corpus), "max_length": length, "vocab_size": vocab,
        "corpus_sha256": corpus_digest(corpus), "teacher": str(cfg.teacher), "shards": [],
    }
    bar = Progress(len(corpus), desc="cache-teacher", unit="seq", per_unit=("tok", length), enabled=cfg.progress)
    with atomic_dir(cfg.output) as tmp:
        start = 0
        for i, rows in enumerate(corpus.shard_rows):
            names = {key: f"{key}-{i:05d}.npy" for key in ("indices", "logprobs", "log_rest")}
            idx_out = np.lib.format.open_memmap(tmp / names["indices"], mode="w+", dtype=np.int32,
                                                shape=(rows, length, k))
            lp_out = np.lib.format.open_memmap(tmp / names["logprobs"], mode="w+",
                                               dtype=LOGPROB_DTYPES[cfg.logprob_dtype], shape=(rows, length, k))
            lr_out = np.lib.format.open_memmap(tmp / names["log_rest"], mode="w+", dtype=np.float32,
                                               shape=(rows, length))
            for b in range(0, rows, cfg.batch_size):
                sel = np.arange(start + b, start + min(b + cfg.batch_size, rows))
                ids = corpus.get(sel).to(cfg.device)
                idx, lp, lr = teacher_topk(teacher, ids, k=k, temperature=cfg.temperature, chunk=cfg.chunk_size)
                idx_out[b : b + len(sel)] = idx.cpu().numpy()
                lp_out[b : b + len(sel)] = lp.cpu().numpy()
                lr_out[b : b + len(sel)] = lr.cpu().numpy()
                bar.update(len(sel))
            for arr in (idx_out, lp_out, lr_out):
                arr.flush()
            del idx_out, lp_out, lr_out
            manifest["shards"].append({**names, "rows": int(rows)})
            start += int(rows)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    bar.close()
    return manifest


@torch.no_grad()
def teacher_topk(teacher: torch.nn.Module, ids: torch.Tensor, *, k: int, temperature: float = 1.0,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices (B, T, k), log-probs (B, T, k), log rest mass (B, T)) of the teacher at ``temperature``."""
    from kept.train.objectives import decoder, head_inputs

    hidden, w = head_inputs(teacher, decoder(teacher)(input_ids=ids, use_cache=False).last_hidden_state)  # (B, T, d)
    flat = hidden.reshape(-1, hidden.shape[-1])
    w = w.to(flat.dtype)
    idx_parts, lp_parts, lr_parts = [], [], []
    for s in range(0, flat.shape[0], chunk):
        logp = torch.log_softmax((flat[s : s + chunk] @ w.T).float() / temperature, dim=-1)  # (C, V)
        lp, idx = logp.topk(k, dim=-1)  # (C, k)
        if k < logp.shape[-1]:
            rest = torch.logsumexp(logp.scatter(1, idx, float("-inf")), dim=-1)  # (C,)
        else:
            rest = torch.full((logp.shape[0],), float("-inf"), device=logp.device)
        idx_parts.append(idx.int())
        lp_parts.append(lp)
        lr_parts.append(rest)
    shape = ids.shape
    return (torch.cat(idx_parts).reshape(*shape, k), torch.cat(lp_parts).reshape(*shape, k),
            torch.cat(lr_parts).reshape(shape))


class TeacherCache:
    """Reader of a cache dir: rows by corpus sequence index, memory-mapped."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing teacher-cache manifest.json")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for shard in self.manifest["shards"]:
            arrays = []
            for key in ("indices", "logprobs", "log_rest"):
                file = self.directory / shard[key]
                if not file.is_file():
                    raise CheckpointError(f"{file}: teacher-cache shard listed in {path} is missing")
                arrays.append(np.load(file, mmap_mode="r", allow_pickle=False))
            self._parts.append(tuple(arrays))  # type: ignore[arg-type]
        self._offsets = np.cumsum([0] + [s["rows"] for s in self.manifest["shards"]])

    def check(self, *, corpus: PackedCorpus, temperature: float, vocab_size: int, length: int) -> None:
        """Raise unless this cache was made from ``corpus`` at ``temperature`` for this vocabulary."""
        m, where = self.manifest, self.directory / "manifest.json"
        if m["corpus_sha256"] != corpus_digest(corpus):
            raise CheckpointError(f"{where}: cache was made from another corpus than {corpus.directory}")
        if abs(m["temperature"] - temperature) > 1e-12:
            raise ConfigError(f"{where}: cache temperature {m['temperature']} != training temperature {temperature}")
        if m["vocab_size"] != vocab_size:
            raise CheckpointError(f"{where}: cache vocab_size {m['vocab_size']} != student vocab_size {vocab_size}")
        if m["max_length"] < length:
            raise CheckpointError(f"{where}: cache max_length {m['max_length']} < training length {length}")

    def get(self, indices: np.ndarray, *, length: int, device: torch.device | str = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices int64 (B, T, k), log-probs float32 (B, T, k), log rest float32 (B, T)) for corpus rows."""
        parts: list[list[np.ndarray]] = [[], [], []]
        for row in indices:
            s = int(np.searchsorted(self._offsets, row, side="right") - 1)
            r = int(row - self._offsets[s])
            for j in range(3):
                parts[j].append(np.asarray(self._parts[s][j][r, :length]))
        idx, lp, lr = (np.stack(p) for p in parts)
        return (torch.from_numpy(idx.astype(np.int64)).to(device), torch.from_numpy(lp.astype(np.float32)).to(device),
                torch.from_numpy(lr).to(device))
