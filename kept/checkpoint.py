"""Read tensors one at a time from a Hugging Face style checkpoint directory, without running its code.

Supported layouts: ``pytorch_model.bin.index.json`` + pickled ``.bin`` shards (Orion on the hub), a single
``pytorch_model.bin``, ``model.safetensors.index.json`` + shards, or a single ``model.safetensors``.

Pickled shards are never handed to :mod:`pickle` or ``torch.load`` as a whole. We read only the shard's
``data.pkl`` with an unpickler whose ``find_class`` knows a short whitelist (the tensor-rebuild functions,
the typed storage classes, ``OrderedDict``, dtypes) and answers anything else -- ``os.system``, ``eval``,
any class -- with a :class:`CheckpointError` before it can run. The rebuild functions are our own stand-ins
that record where each tensor's bytes live; a tensor's bytes are read from its zip member (stored
uncompressed by ``torch.save``) only when :meth:`TensorReader.get` asks for it, straight into a fresh
buffer, or mapped a window of rows at a time (:meth:`TensorReader.mapped_rows`), so the resident memory of a
streaming consumer stays near the size of what it holds, not the size of a shard. :func:`all_finite` checks a
tensor for NaN/Inf as integers, without temporaries.
"""

from __future__ import annotations

import collections
import json
import math
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from kept.errors import CheckpointError

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
ST_INDEX = "model.safetensors.index.json"
ST_SINGLE = "model.safetensors"

# Typed storage classes torch.save writes (GLOBAL 'torch <name>') -> element dtype.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
# dtype objects a pickle may name (GLOBAL 'torch <name>', used by _rebuild_tensor_v3).
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
# safetensors dtype codes -> torch dtypes (and back, for the writer in kept.convert).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_CODES: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}

# Floating dtypes -> (signed int view, unsigned int view, +inf bits, -inf bits). A value is NaN or infinite iff its
# exponent bits are all ones: as a signed integer a positive one is >= +inf's bits, and as an unsigned integer a
# negative one is >= -inf's bits (every finite value lies below both). Two integer max-reductions, which numpy
# vectorises, check a block of any size without a temporary.
_NONFINITE: dict[torch.dtype, tuple[type, type, int, int]] = {
    torch.float16: (np.int16, np.uint16, 0x7C00, 0xFC00),
    torch.bfloat16: (np.int16, np.uint16, 0x7F80, 0xFF80),
    torch.float32: (np.int32, np.uint32, 0x7F80_0000, 0xFF80_0000),
    torch.float64: (np.int64, np.uint64, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000),
}
FLOAT_DTYPES = tuple(_NONFINITE)
_CHECK_BYTES = 1 << 18  # per reduction: both passes over a chunk stay in cache


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of the CPU floating tensor ``t`` is finite (one read of its bytes)."""
    signed, unsigned, pos, neg = _NONFINITE[t.dtype]
    flat = t.reshape(-1)
    if not flat.is_contiguous():  # pragma: no cover - reshape of a strided view copies
        flat = flat.contiguous()
    raw = flat.view(torch.uint8).numpy()
    s, u = raw.view(signed), raw.view(unsigned)
    step = _CHECK_BYTES // t.dtype.itemsize
    for i in range(0, s.size, step):
        if int(s[i : i + step].max()) >= pos or int(u[i : i + step].max()) >= neg:
            return False
    return True


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live and how to view them; no data is read to build it."""

    name: str
    file: str  # shard file name, relative to the checkpoint directory
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # absolute byte offset of the storage (pickle) or tensor (safetensors) in the file
    storage_numel: int  # elements in the storage the tensor views
    storage_offset: int  # element offset of the tensor inside its storage

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def dense(self) -> bool:
        """Whether its bytes are one row-major run in the file, starting at :attr:`data_offset`."""
        return self.numel <= 1 or self.stride == _contiguous_stride(self.shape)

    @property
    def data_offset(self) -> int:
        """Absolute file offset of its first element."""
        return self.offset + self.storage_offset * self.dtype.itemsize


# ---- restricted unpickling of torch.save's data.pkl ---------------------------------------------------


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor{,_v2}``: records the view, builds nothing."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
    try:
        shape = tuple(int(s) for s in size)
        strides = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError(f"malformed tensor record ({exc})") from exc
    ref = _TensorRef(storage, offset, shape, strides)
    problem = _view_problem(ref)
    if problem:
        raise pickle.UnpicklingError(problem)
    return ref


def _view_problem(ref: _TensorRef) -> str | None:
    """Why a tensor record cannot be a view of its storage (None if it can)."""
    shape, strides, offset = ref.shape, ref.stride, ref.storage_offset
    if len(shape) != len(strides) or any(s < 0 for s in shape + strides) or offset < 0:
        return f"malformed tensor record: size {shape}, stride {strides}, offset {offset}"
    if math.prod(shape) and offset + sum((n - 1) * s for n, s in zip(shape, strides)) >= ref.storage.numel:
        return f"tensor view {shape}/{strides}+{offset} exceeds its storage of {ref.storage.numel} elements"
    return None


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_: Any
) -> _TensorRef:
    """Stand-in for ``_rebuild_tensor_v3`` (untyped storage + explicit dtype)."""
    if not isinstance(storage, _StorageRef) or not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("malformed _rebuild_tensor_v3 record")
    if storage.dtype is not torch.uint8:
        raise pickle.UnpicklingError("_rebuild_tensor_v3 on a typed storage")
    if storage.numel % dtype.itemsize:
        raise pickle.UnpicklingError(f"untyped storage of {storage.numel} bytes is not a whole number of {dtype}")
    typed = _StorageRef(storage.key, dtype, storage.numel // dtype.itemsize)
    return _rebuild_tensor(typed, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor here."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


class _UntypedStorageMarker:
    """Marks ``torch.UntypedStorage`` in a persistent id (bytes, dtype given later by _rebuild_tensor_v3)."""


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _UntypedStorageMarker,
    **{("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl into :class:`_TensorRef` records; refuses every other global."""

    def __init__(self, fh: BinaryIO, where: str) -> None:
        super().__init__(fh)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.where}: refusing to load: the pickle references {module}.{name}, which is not a tensor "
                "type (a checkpoint that names other callables could run code on load)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if storage_type is _UntypedStorageMarker:
            dtype = torch.uint8
        elif isinstance(storage_type, torch.dtype) and storage_type in STORAGE_DTYPES.values():
            dtype = storage_type
        else:
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage record {pid!r:.80}")
        return _StorageRef(key, dtype, numel)


def _zip_data_offset(fh: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Absolute offset of a stored zip member's bytes (its local header may carry alignment padding)."""
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{where}: corrupt zip entry {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _scan_pickle_shard(path: Path, rel: str) -> dict[str, TensorInfo]:
    """Tensor records of a torch.save zip file, read from its data.pkl only."""
    where = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x80\x02" or magic[:1] == b"\x80":
            raise CheckpointError(
                f"{where}: legacy (pre-zip) torch.save format is not supported; re-save it with torch>=1.6"
            ) from exc
        raise CheckpointError(f"{where}: not a readable torch checkpoint (truncated or corrupt zip: {exc})") from exc
    size = path.stat().st_size
    with zf, open(path, "rb") as fh:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{where}: expected exactly one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{where}: big-endian checkpoints are not supported")
        try:
            obj = _RestrictedUnpickler(zf.open(pkl[0]), where).load()
        except CheckpointError:
            raise
        except Exception as exc:  # malformed pickles raise many types
            raise CheckpointError(f"{where}: cannot unpickle data.pkl safely ({type(exc).__name__}: {exc})") from exc
        if not isinstance(obj, dict):
            raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
        out: dict[str, TensorInfo] = {}
        for name, ref in obj.items():
            if not isinstance(name, str) or not isinstance(ref, _TensorRef):
                raise CheckpointError(f"{where}: entry {name!r} is not a tensor")
            problem = _view_problem(ref)  # again: BUILD opcodes could have edited the record after rebuild
            if problem:
                raise CheckpointError(f"{where}: tensor {name!r}: {problem}")
            member = f"{prefix}data/{ref.storage.key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise CheckpointError(f"{where}: tensor {name!r} points to missing storage {member!r}") from None
            nbytes = ref.storage.numel * ref.storage.dtype.itemsize
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{where}: storage of tensor {name!r} is compressed (not a torch.save file)")
            if info.file_size != nbytes:
                raise CheckpointError(
                    f"{where}: storage of tensor {name!r} holds {info.file_size} bytes, expected {nbytes}"
                )
            start = _zip_data_offset(fh, info, where)
            if start + nbytes > size:
                raise CheckpointError(f"{where}: tensor {name!r} runs past the end of the file (truncated shard)")
            out[name] = TensorInfo(
                name=name,
                file=rel,
                dtype=ref.storage.dtype,
                shape=ref.shape,
                stride=ref.stride,
                offset=start,
                storage_numel=ref.storage.numel,
                storage_offset=ref.storage_offset,
            )
    return out


# ---- safetensors headers -------------------------------------------------------------------------------


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))


def _scan_safetensors_shard(path: Path, rel: str) -> dict[str, TensorInfo]:
    """Tensor records of a safetensors file, read from its JSON header only."""
    where = str(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{where}: truncated safetensors file (no header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, 100 * 2**20):
            raise CheckpointError(f"{where}: corrupt safetensors header length {hlen} (file is {size} bytes)")
        try:
            header = json.loads(fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{where}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: corrupt safetensors header")
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = ST_DTYPES[meta["dtype"]]
            shape = tuple(int(s) for s in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: bad header entry for tensor {name!r} ({exc!r})") from exc
        numel = math.prod(shape)
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise CheckpointError(f"{where}: tensor {name!r} has {end - begin} bytes for shape {shape} {dtype}")
        if base + end > size:
            raise CheckpointError(f"{where}: tensor {name!r} runs past the end of the file (truncated shard)")
        out[name] = TensorInfo(name, rel, dtype, shape, _contiguous_stride(shape), base + begin, numel, 0)
    return out


# ---- the reader ------------------------------------------------------------------------------------------


class TensorReader:
    """Lazy tensor access: ``names()`` lists every tensor, ``info(name)`` its dtype and shape (no data read),
    ``get(name)`` loads just that one tensor.

    Construction reads every shard's metadata (pickle or header, never the weights), so a missing or truncated
    shard, a corrupt or unsafe pickle, or an index entry whose tensor is missing fails at once with a
    :class:`CheckpointError` naming the file and tensor.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: checkpoint directory does not exist")
        self.index: Path | None = None  # the shard index, when the checkpoint has one
        self.weight_map = self._discover()
        self._infos: dict[str, TensorInfo] = {}
        scanned: dict[str, dict[str, TensorInfo]] = {}
        for name, shard in self.weight_map.items():
            if shard not in scanned:
                scanned[shard] = self._scan(shard)
            if name not in scanned[shard]:
                raise CheckpointError(
                    f"{self.directory}: the index lists tensor {name!r} in {shard}, but that shard lacks it"
                )
            self._infos[name] = scanned[shard][name]
        for shard, held in scanned.items():
            unlisted = sorted(n for n in held if self.weight_map.get(n) != shard)
            if unlisted:
                raise CheckpointError(
                    f"{self.index}: shard {shard} holds tensor {unlisted[0]!r}, which the index does not list "
                    f"there ({len(unlisted)} such); the index does not describe these shards"
                )
        self._fh: BinaryIO | None = None
        self._fh_name: str | None = None
        self._fds: dict[str, int] = {}

    def _discover(self) -> dict[str, str]:
        d = self.directory
        for index_name in (ST_INDEX, BIN_INDEX):
            index = d / index_name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                    if not isinstance(weight_map, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
                    ):
                        raise TypeError("weight_map must map tensor names to file names")
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"{index}: not a valid shard index ({exc})") from exc
                for name, shard in weight_map.items():
                    if "/" in shard or "\\" in shard or shard.startswith("."):
                        raise CheckpointError(f"{index}: tensor {name!r} names shard {shard!r} outside the directory")
                    if not (d / shard).is_file():
                        raise CheckpointError(f"{index}: tensor {name!r} points to missing shard {d / shard}")
                self.index = index
                return dict(weight_map)
        for single in (ST_SINGLE, BIN_SINGLE):
            if (d / single).is_file():
                return {name: single for name in self._scan(single)}
        raise CheckpointError(
            f"{d}: no weights found (expected {BIN_INDEX}, {BIN_SINGLE}, {ST_INDEX} or {ST_SINGLE})"
        )

    def _scan(self, shard: str) -> dict[str, TensorInfo]:
        path = self.directory / shard
        if shard.endswith(".safetensors"):
            return _scan_safetensors_shard(path, shard)
        return _scan_pickle_shard(path, shard)

    def names(self) -> list[str]:
        """All tensor names, in shard order."""
        return sorted(self.weight_map, key=lambda n: (self.weight_map[n], self._infos[n].offset, n))

    def info(self, name: str) -> TensorInfo:
        """Dtype, shape and location of a tensor, without reading it."""
        if name not in self._infos:
            raise CheckpointError(f"{self.directory}: no tensor named {name!r}")
        return self._infos[name]

    def _file(self, shard: str) -> BinaryIO:
        if self._fh_name != shard:
            self._close_fh()
            try:
                self._fh = open(self.directory / shard, "rb")
            except OSError as exc:
                raise CheckpointError(f"{self.directory / shard}: cannot open shard ({exc})") from exc
            self._fh_name = shard
        assert self._fh is not None
        return self._fh

    def _read(self, fh: BinaryIO, offset: int, nbytes: int, where: str, out: torch.Tensor | None) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8) if out is None else out[:nbytes]
        if nbytes:
            fh.seek(offset)
            got = fh.readinto(memoryview(buf.numpy()))
            if got != nbytes:
                raise CheckpointError(f"{where}: short read ({got} of {nbytes} bytes; truncated shard?)")
        return buf

    def get(self, name: str, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Load one tensor (CPU, its stored dtype) into fresh memory, or into ``out`` (a 1-D uint8 CPU buffer of
        at least ``info(name).nbytes`` bytes; the result then aliases it, so a streaming reader can reuse one
        buffer for every tensor)."""
        ti = self.info(name)
        fh = self._file(ti.file)
        where = f"{self.directory / ti.file}: tensor {name!r}"
        item = ti.dtype.itemsize
        if out is not None and (out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < ti.nbytes):
            raise ValueError(f"out must be a 1-D uint8 tensor of at least {ti.nbytes} bytes")
        if ti.stride == _contiguous_stride(ti.shape) or ti.numel <= 1:
            # Common case: a dense view; read exactly its bytes.
            raw = self._read(fh, ti.offset + ti.storage_offset * item, ti.nbytes, where, out)
            return raw.view(ti.dtype).reshape(ti.shape)
        raw = self._read(fh, ti.offset, ti.storage_numel * item, where, None)
        storage = raw.view(ti.dtype)
        return storage.as_strided(ti.shape, ti.stride, ti.storage_offset).clone()

    def get_rows(self, name: str, start: int, stop: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of a dense tensor, reading only their bytes (e.g. a vocabulary block of a head);
        ``out`` as in :meth:`get`."""
        ti = self.info(name)
        if not ti.shape or ti.stride != _contiguous_stride(ti.shape):
            return self.get(name)[start:stop].clone()
        start, stop = max(0, start), min(stop, ti.shape[0])
        row = math.prod(ti.shape[1:]) * ti.dtype.itemsize
        nbytes = max(0, stop - start) * row
        if out is not None and (out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < nbytes):
            raise ValueError(f"out must be a 1-D uint8 tensor of at least {nbytes} bytes")
        offset = ti.offset + ti.storage_offset * ti.dtype.itemsize + start * row
        where = f"{self.directory / ti.file}: tensor {name!r}"
        raw = self._read(self._file(ti.file), offset, nbytes, where, out)
        return raw.view(ti.dtype).reshape(max(0, stop - start), *ti.shape[1:])

    def fileno(self, name: str) -> int:
        """An OS file descriptor of the shard holding ``name`` (open until :meth:`close`), for positional reads
        and kernel copies of its bytes (:attr:`TensorInfo.data_offset`)."""
        shard = self.info(name).file
        if shard not in self._fds:
            path = self.directory / shard
            try:
                self._fds[shard] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot open shard ({exc.strerror})") from exc
        return self._fds[shard]

    def mapped_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a dense tensor as a view of the file's pages (mmap, no copy; the pages stay
        mapped until the returned tensor is freed). Read-only by contract: writing into it is not allowed."""
        ti = self.info(name)
        if not ti.dense:
            raise ValueError(f"{name}: not a dense tensor")
        shape = ti.shape or (1,)
        row = math.prod(shape[1:]) * ti.dtype.itemsize
        start, stop = max(0, start), min(stop, shape[0])
        begin = ti.data_offset + start * row
        nbytes = max(0, stop - start) * row
        if nbytes == 0:
            return torch.empty((0, *shape[1:]), dtype=ti.dtype)
        base = begin - begin % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)  # read-only: populate does not copy pages
        try:
            mm = mmap.mmap(self.fileno(name), begin - base + nbytes, flags=flags, prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.directory / ti.file}: tensor {name!r}: cannot map its bytes ({exc})") from exc
        arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=begin - base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": we never write through it
            raw = torch.from_numpy(arr)
        return raw.view(ti.dtype).view(stop - start, *shape[1:])

    def iter_by_shard(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, one shard open at a time."""
        for name in self.names():
            yield name, self.get(name)

    def _close_fh(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._fh_name = None

    def close(self) -> None:
        self._close_fh()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
