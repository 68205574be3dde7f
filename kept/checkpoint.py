"""Read tensors one at a time from a Hugging Face style checkpoint directory, without running its code.

Supported layouts: ``pytorch_model.bin.index.json`` + pickled ``.bin`` shards (Orion on the hub), a single
``pytorch_model.bin``, ``model.safetensors.index.json`` + shards, or a single ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from kept.errors import CheckpointError

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
ST_INDEX = "model.safetensors.index.json"
ST_SINGLE = "model.safetensors"


class TensorReader:
    """Lazy tensor access: ``names()`` lists every tensor, ``get(name)`` loads just that one.

    Shards are visited in the order :meth:`iter_by_shard` gives, so a streaming consumer keeps at most one
    shard mapped at a time.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: checkpoint directory does not exist")
        self.weight_map = self._discover()
        self._open_file: str | None = None
        self._open_shard: dict[str, torch.Tensor] | None = None
        self._st_handle = None

    def _discover(self) -> dict[str, str]:
        d = self.directory
        for index_name in (ST_INDEX, BIN_INDEX):
            index = d / index_name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"{index}: not a valid shard index ({exc})") from exc
                for name, shard in weight_map.items():
                    if not (d / shard).is_file():
                        raise CheckpointError(f"{index}: tensor {name!r} points to missing shard {d / shard}")
                return dict(weight_map)
        for single in (ST_SINGLE, BIN_SINGLE):
            if (d / single).is_file():
                return {name: single for name in self._shard_names(single)}
        raise CheckpointError(
            f"{d}: no weights found (expected {BIN_INDEX}, {BIN_SINGLE}, {ST_INDEX} or {ST_SINGLE})"
        )

    def _shard_names(self, filename: str) -> list[str]:
        self._load_shard(filename)
        if self._st_handle is not None:
            return list(self._st_handle.keys())
        assert self._open_shard is not None
        return list(self._open_shard.keys())

    def _load_shard(self, filename: str) -> None:
        if self._open_file == filename:
            return
        self.close()
        path = self.directory / filename
        try:
            if filename.endswith(".safetensors"):
                from safetensors import safe_open

                self._st_handle = safe_open(str(path), framework="pt", device="cpu")
            else:
                shard = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                if not isinstance(shard, dict):
                    raise CheckpointError(f"{path}: expected a dict of tensors, found {type(shard).__name__}")
                self._open_shard = shard
        except CheckpointError:
            raise
        except Exception as exc:  # torch/safetensors raise many types for corrupt or unsafe files
            raise CheckpointError(f"{path}: cannot read shard safely ({type(exc).__name__}: {exc})") from exc
        self._open_file = filename

    def names(self) -> list[str]:
        """All tensor names, in shard order."""
        return sorted(self.weight_map, key=lambda n: (self.weight_map[n], n))

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor (opening its shard if needed)."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.directory}: no tensor named {name!r}")
        filename = self.weight_map[name]
        self._load_shard(filename)
        if self._st_handle is not None:
            if name not in self._st_handle.keys():
                raise CheckpointError(f"{self.directory / filename}: index lists {name!r} but the shard lacks it")
            return self._st_handle.get_tensor(name)
        assert self._open_shard is not None
        if name not in self._open_shard:
            raise CheckpointError(f"{self.directory / filename}: index lists {name!r} but the shard lacks it")
        return self._open_shard[name]

    def iter_by_shard(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, one shard open at a time."""
        for name in self.names():
            yield name, self.get(name)

    def close(self) -> None:
        self._open_shard = None
        self._st_handle = None
        self._open_file = None

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
