"""The packed corpus as training batches, in an order fixed by the seed and the step alone.

Every run built from the same corpus, seed and global batch reads the same sequences at the same optimizer step,
whatever the objective and however many processes share the batch; the data position after a resume is just the
step count.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from kept.errors import CheckpointError


class PackedCorpus:
    """Read-only view of a packed corpus dir: ``manifest.json`` + ``shards/*.npy`` (int32, (n, max_length))."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing corpus manifest.json")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
        for key in ("max_length", "shards"):
            if key not in self.manifest:
                raise CheckpointError(f"{path}: missing key {key!r}")
        self.max_length = int(self.manifest["max_length"])
        self._shards: list[np.ndarray] = []
        for rel in self.manifest["shards"]:
            shard = self.directory / rel
            if not shard.is_file():
                raise CheckpointError(f"{shard}: corpus shard listed in {path} is missing")
            try:
                arr = np.load(shard, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise CheckpointError(f"{shard}: unreadable corpus shard ({exc})") from exc
            if arr.ndim != 2 or arr.shape[1] != self.max_length or arr.dtype != np.int32:
                raise CheckpointError(
                    f"{shard}: expected int32 array of shape (n, {self.max_length}), "
                    f"found {arr.dtype} {arr.shape}"
                )
            self._shards.append(arr)
        self.shard_rows = [len(a) for a in self._shards]
        self._offsets = np.cumsum([0] + self.shard_rows)
        self.num_sequences = int(self._offsets[-1])
        if self.num_sequences == 0:
            raise CheckpointError(f"{path}: the corpus holds no sequences")

    def __len__(self) -> int:
        return self.num_sequences

    def get(self, indices: np.ndarray, *, length: int | None = None) -> torch.Tensor:
        """Sequences ``indices`` as a (len(indices), length) int64 tensor."""
        length = length or self.max_length
        out = np.empty((len(indices), length), dtype=np.int64)
        for row, idx in enumerate(indices):
            shard = int(np.searchsorted(self._offsets, idx, side="right") - 1)
            out[row] = self._shards[shard][idx - self._offsets[shard], :length]
        return torch.from_numpy(out)

    def check_vocab(self, vocab_size: int, *, where: str) -> None:
        """Raise if any token id is outside ``[0, vocab_size)`` of the model at ``where``."""
        hi = max(int(a.max()) for a in self._shards)
        lo = min(int(a.min()) for a in self._shards)
        if lo < 0 or hi >= vocab_size:
            raise CheckpointError(
                f"{self.directory}: token ids span [{lo}, {hi}] but {where} has vocab_size {vocab_size}"
            )


def sample_order(num_sequences: int, *, seed: int, start: int, count: int) -> np.ndarray:
    """Corpus indices of global samples ``start .. start+count-1``: epoch e is a permutation seeded by
    (seed, e), so the order never depends on anything but the seed and the sample number."""
    out = np.empty(count, dtype=np.int64)
    pos = 0
    while pos < count:
        epoch, offset = divmod(start + pos, num_sequences)
        take = min(count - pos, num_sequences - offset)
        out[pos : pos + take] = _permutation(num_sequences, seed, epoch)[offset : offset + take]
        pos += take
    return out


@functools.lru_cache(maxsize=4)
def _permutation(num_sequences: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_sequences)


class BatchSchedule:
    """Which sequences a process reads at (optimizer step, micro step).

    A global batch of ``batch_size * grad_accum * world_size`` sequences per optimizer step; micro step m of
    process r reads the slice ``[(m * world + r) * batch_size, ... + batch_size)`` of it.
    """

    def __init__(self, corpus: PackedCorpus, *, seed: int, batch_size: int, grad_accum: int,
                 world_size: int = 1, rank: int = 0, limit: int | None = None) -> None:
        self.corpus = corpus
        # serve only corpus indices [0, limit): the tail is held out (kept.train.parity); None = every sequence
        self.limit = len(corpus) if limit is None else int(limit)
        self.seed = seed
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.global_batch = batch_size * grad_accum * world_size

    def indices(self, step: int, micro: int) -> np.ndarray:
        """Corpus indices of process ``rank``'s micro-batch ``micro`` of optimizer step ``step`` (0-based)."""
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
        return sample_order(self.limit, seed=self.seed, start=start, count=self.batch_size)
