"""Convert an Orion checkpoint into a stock ``LlamaForCausalLM`` checkpoint (NPM + OPM), streaming.

One source tensor is read at a time (:class:`kept.checkpoint.TensorReader`, through mapped windows of the page
cache) and written straight into its safetensors shard, whose header is planned from the mapping before any weight
is read: a tensor the mapping leaves byte-identical is copied file to file by the kernel, the others are computed
in cache-sized row blocks (float64, or float32 for bfloat16/float16 outputs: :func:`arith_dtype`). Copies and
writes run on two I/O threads beside the arithmetic. Every source tensor is checked (floating dtype, shape, finite
values, the dropped ones included). Resident memory stays near a window plus a few buffers, whatever the
checkpoint's size. The whole output -- weights, config, tokenizer, fidelity report -- is written into a temporary
directory that replaces ``output`` only when everything succeeded, and only if ``output`` is ours
(:mod:`kept.atomic`).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import functools
import json
import logging
import math
import os
import re
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from kept.atomic import atomic_dir, check_output
from kept.checkpoint import FLOAT_DTYPES, ST_CODES, TensorReader, all_finite
from kept.errors import CheckpointError, ConfigError
from kept.mapping import CENTRED_NORMS, NORMS, Plan, Step, plan_conversion
from kept.orion import DTYPES, read_orion_config
from kept.progress import Progress

log = logging.getLogger(__name__)

BLOCK_BYTES = 2**20  # float64 working block of the row-wise arithmetic (stays in cache)
WINDOW_BYTES = 64 * 2**20  # source bytes mapped at once
STAGING_BYTES = 2**20  # output bytes gathered per write call (four such buffers in flight; small enough to stay
# in cache between the cast and the write: 8 MiB buffers cost the 2.2 GB bench conversion ~0.8 s more CPU)
COPY_BYTES = 8 * 2**20  # buffer of the copy fallback where the kernel cannot copy between the files
INDEX = "model.safetensors.index.json"
OVERWRITE_HINT = "choose another output directory, or pass --overwrite (overwrite=True) to replace it"
GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more with mmap (glibc ``mallopt(M_MMAP_THRESHOLD)``).

    glibc raises its mmap threshold dynamically (up to 32 MB) as large blocks are freed, after which blocks of a
    few MB come from the heap, fragment it, and keep resident memory growing layer after layer of a streaming
    pass. A fixed threshold returns every freed block to the system at once, so resident memory tracks what is
    live. Process-wide and harmless elsewhere; a no-op (False) off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5e9 bytes (KB/MB/GB decimal, KiB/MiB/GiB binary, as Hugging Face's max_shard_size)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ConfigError(f"max_shard_size {text!r} is not a size like '5GB' or '500MiB'")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise ConfigError(f"max_shard_size {text!r} must be positive")
    return size


# ---- reading: mapped row windows, every byte checked ---------------------------------------------------------
#
# Memory discipline: source bytes are never copied into our own memory. A tensor is read as row windows of at
# most WINDOW_BYTES mapped from the page cache (mmap), checked for NaN/Inf as integers (kept.checkpoint.all_finite)
# and, where the mapping changes it, converted to float64 in cache-sized row blocks in one reusable work buffer,
# cast into one of a few reusable staging buffers and written out. Resident memory is the imports plus a window,
# the buffers and the largest 1-D tensor, whatever the checkpoint's size.


class _Source:
    """The conversion's access to the source tensors: mapped windows, small (1-D) tensors kept on the side,
    row blocks for the arithmetic, and a record of which tensors were checked finite, so that the ones no step
    reads (dropped tensors) are checked at the end.

    A tensor copied as it is, or dropped, is checked over its mapped bytes (:func:`all_finite`). A tensor the
    arithmetic reads is checked for free by the reduction the arithmetic computes anyway (:meth:`verify`): a sum
    or dot product over every element is NaN or infinite whenever one element is (NaN and Inf propagate through
    sums and products with finite numbers)."""

    def __init__(self, reader: TensorReader, *, arith: torch.dtype = torch.float64) -> None:
        self.reader = reader
        self.where = reader.directory
        self.arith = arith  # dtype of the mapping arithmetic (see arith_dtype)
        self.checked: set[str] = set()
        self._small: dict[str, torch.Tensor] = {}
        self._work: dict[torch.dtype, torch.Tensor] = {}

    def shareable(self, names: list[str]) -> bool:
        """Read the 1-D tensors among ``names`` now; True if a :meth:`twin` can then read all of ``names`` on
        another thread (they are dense: mapped windows are thread-safe, the reader's buffered file is not)."""
        for name in names:
            if len(self.reader.info(name).shape) < 2:
                self.small(name)
        return all(self.reader.info(n).dense for n in names)

    def twin(self) -> "_Source":
        """A view for another thread (after :meth:`shareable`): its own work buffers and checks, the 1-D tensors
        read here shared."""
        other = _Source(self.reader, arith=self.arith)
        other._small = self._small
        return other

    def _fail(self, name: str) -> CheckpointError:
        return CheckpointError(f"{self.where / self.reader.info(name).file}: tensor {name!r} contains NaN or Inf")

    def small(self, name: str) -> torch.Tensor:
        """A 1-D (or 0-D) tensor in its stored dtype, checked."""
        if name not in self._small:
            t = self.reader.get(name)
            if not all_finite(t):
                raise self._fail(name)
            self._small[name] = t
            self.checked.add(name)
        return self._small[name]

    def windows(self, name: str, *, rows_per_block: int = 1, check: bool = True) -> Iterator[torch.Tensor]:
        """The tensor as row windows (a multiple of ``rows_per_block`` rows, at most about WINDOW_BYTES each) in
        its stored dtype, each checked before it is yielded unless ``check`` is False (the caller checks);
        valid until the next one."""
        ti = self.reader.info(name)
        if not ti.dense or len(ti.shape) < 2:  # strided pickles and 1-D tensors: read whole, then slice
            t = self.small(name) if len(ti.shape) < 2 else self.reader.get(name)
            if name not in self.checked:
                if not all_finite(t):
                    raise self._fail(name)
                self.checked.add(name)
            yield t if t.dim() else t.reshape(1)
            return
        row = math.prod(ti.shape[1:]) * ti.dtype.itemsize
        step = max(1, WINDOW_BYTES // max(1, row * rows_per_block)) * rows_per_block
        for r in range(0, ti.shape[0], step):
            win = self.reader.mapped_rows(name, r, r + step)
            if check and name not in self.checked and not all_finite(win):
                raise self._fail(name)
            yield win
            del win
        if check:
            self.checked.add(name)

    def check(self, name: str) -> None:
        """Read and check a tensor no step transforms (copied by the kernel, or dropped)."""
        if name not in self.checked:
            for _ in self.windows(name):
                pass

    def blocks(self, name: str, dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
        """Row blocks of ``name`` copied into the work buffer of ``dtype`` (default :attr:`arith`), each valid until
        the next; unchecked: the caller passes a reduction over all of them to :meth:`verify`."""
        dtype = dtype or self.arith
        ti = self.reader.info(name)
        cols = math.prod(ti.shape[1:]) if len(ti.shape) > 1 else 1
        rows = max(1, BLOCK_BYTES // (dtype.itemsize * cols))
        if dtype not in self._work or rows * cols > self._work[dtype].numel():
            self._work[dtype] = torch.empty(max(rows * cols, BLOCK_BYTES // dtype.itemsize), dtype=dtype)
        buf = self._work[dtype]
        for win in self.windows(name, rows_per_block=rows, check=False):
            flat = win.reshape(win.shape[0], -1) if win.dim() > 1 else win.reshape(-1, 1)
            for r in range(0, flat.shape[0], rows):
                src = flat[r : r + rows]
                work = buf[: src.numel()].view(src.shape)
                work.copy_(src)
                yield work

    def verify(self, name: str, reduced: torch.Tensor, *, done: bool = True) -> None:
        """``reduced``: sums or dot products (with finite factors) covering elements of ``name``; if one is not
        finite, the tensor holds a NaN or Inf (or its values overflow the arithmetic). ``done``: every element of
        ``name`` has now been covered."""
        if not bool(torch.isfinite(reduced).all()):
            self.checked.discard(name)
            self.check(name)  # names a NaN or Inf precisely
            raise CheckpointError(f"{self.where / self.reader.info(name).file}: tensor {name!r} overflows in "
                                  f"{str(reduced.dtype).removeprefix('torch.')} arithmetic")
        if done:
            self.checked.add(name)


def _produce(step: Step, src: _Source, out_dtype: torch.dtype, gains: dict[str, torch.Tensor]) -> Iterator[torch.Tensor]:
    """Blocks of the target tensor in row-major order (any dtype: the writer casts them to ``out_dtype``); each
    block is valid until the next one is asked for."""
    op = step.op
    if op == "zeros":
        yield torch.zeros(step.shape, dtype=out_dtype)
        return
    if op == "fit_gain":
        yield gains[step.target]
        return
    if op == "fold":  # b = W @ beta, W [out, in]
        w_name, b_name = step.sources
        stored = src.reader.info(w_name).dtype
        beta = src.small(b_name)
        if src.arith == torch.float32 and stored == beta.dtype == out_dtype == torch.bfloat16:
            # bf16 x bf16 matrix-vector products accumulate in float32 (the float32 path's result, without
            # converting W): straight from the mapped windows
            bias = torch.cat([torch.mv(win, beta) for win in src.windows(w_name, check=False)])
        else:
            beta = beta.to(src.arith)
            bias = torch.empty(step.shape[0], dtype=src.arith)
            r = 0
            for blk in src.blocks(w_name):
                torch.mv(blk, beta, out=bias[r : r + blk.shape[0]])
                r += blk.shape[0]
        src.verify(w_name, bias)
        yield bias
        return
    name = step.sources[0]
    if op in ("copy", "gain"):  # cast (one rounding) by the writer, if the dtype changes
        for win in src.windows(name):
            row = win[0].numel() if win.dim() > 1 else 1
            rows = max(1, STAGING_BYTES // (2 * out_dtype.itemsize * max(1, row)))
            for r in range(0, max(1, win.shape[0] if win.dim() else 1), rows):
                yield win[r : r + rows] if win.dim() else win
    elif op == "center_rows":  # rows written into the stream: E - E.mean(dim=1)
        for blk in src.blocks(name):
            mean = blk.mean(dim=1, keepdim=True)
            src.verify(name, mean, done=False)
            blk -= mean
            yield blk
        src.checked.add(name)  # every row's mean was verified
    elif op == "center_out":  # [out, in] projection into the stream: W - W.mean(dim=0)
        shape = src.reader.info(name).shape
        col = torch.zeros(shape[1:], dtype=src.arith)
        ones = torch.ones(BLOCK_BYTES // (src.arith.itemsize * max(1, shape[1])) + 1, dtype=src.arith)
        for blk in src.blocks(name):
            col.addmv_(blk.T, ones[: blk.shape[0]])  # column sums, a BLAS pass
        col /= shape[0]
        src.verify(name, col)
        for blk in src.blocks(name):
            blk -= col
            yield blk
    else:  # pragma: no cover - plan_conversion only emits the ops above
        raise AssertionError(f"unknown op {op!r}")


def arith_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the mapping arithmetic (centring, folding) for an output dtype: float64 for float32/float64
    outputs, float32 for bfloat16/float16 outputs (16/13 more mantissa bits than the output). Each output element
    is then a neighbour of the exact value and equals the float64 path's correctly rounded one except within a
    hair of a rounding boundary (tests/test_convert.py; 8e-6 of the elements of the 2.2 GB bench checkpoint).
    The final-norm logit offset is always float64."""
    return torch.float64 if out_dtype.itemsize >= 4 else torch.float32


def _kernel_copy(step: Step, src: _Source, out_dtype: torch.dtype) -> bool:
    """Whether the target is the source's bytes as stored (NPM copy, same dtype, one dense run in a file)."""
    if step.op not in ("copy", "gain"):
        return False
    ti = src.reader.info(step.sources[0])
    return ti.dtype == out_dtype and ti.dense and ti.nbytes > 0


# ---- safetensors shards, written incrementally -----------------------------------------------------------


@dataclass
class _Shard:
    name: str
    steps: list[Step]

    def nbytes(self, itemsize: int) -> int:
        return sum(math.prod(s.shape) * itemsize for s in self.steps)


def plan_shards(steps: list[Step], *, itemsize: int, max_bytes: int) -> list[_Shard]:
    """Greedy, in Llama order: a new shard when the next tensor would push the current one past ``max_bytes``
    (a single tensor larger than that gets a shard of its own, as transformers does)."""
    groups: list[list[Step]] = [[]]
    size = 0
    for s in steps:
        n = math.prod(s.shape) * itemsize
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(s)
        size += n
    total = len(groups)
    return [_Shard(f"model-{i + 1:05d}-of-{total:05d}.safetensors", g) for i, g in enumerate(groups)]


def _header(shard: _Shard, out_dtype: torch.dtype) -> bytes:
    code, item = ST_CODES[out_dtype], out_dtype.itemsize
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for s in shard.steps:
        n = math.prod(s.shape) * item
        meta[s.target] = {"dtype": code, "shape": list(s.shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data
    return struct.pack("<Q", len(raw)) + raw


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, nbytes: int) -> None:
    """``nbytes`` from one file to another inside the kernel (copy_file_range; a buffered copy where the kernel
    or file systems cannot)."""
    end = src_off + nbytes
    if hasattr(os, "copy_file_range"):
        try:
            while src_off < end:
                n = os.copy_file_range(src_fd, dst_fd, end - src_off, src_off, dst_off)
                if n == 0:
                    raise OSError(errno.EIO, "source ended early (truncated shard?)")
                src_off, dst_off = src_off + n, dst_off + n
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
    buf = bytearray(min(COPY_BYTES, end - src_off))
    view = memoryview(buf)
    while src_off < end:
        n = os.preadv(src_fd, [view[: min(len(buf), end - src_off)]], src_off)
        if n == 0:
            raise OSError(errno.EIO, "source ended early (truncated shard?)")
        _pwrite_all(dst_fd, view[:n], dst_off)
        src_off, dst_off = src_off + n, dst_off + n


class _Output:
    """Kernel copies and positional writes into the output shards, each kind in order on its own I/O thread, so
    that they overlap each other and the arithmetic. Producers cast blocks into their own :class:`_Stager`. The
    first I/O failure is raised by the next call or by :meth:`close`. Safe to use from several threads."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="kept-convert-copy")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kept-convert-write")
        self._pending: deque[Future[Any]] = deque()
        self._lock = threading.Lock()

    def _submit(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Future[Any]:
        with self._lock:
            done = []
            while self._pending and self._pending[0].done():
                done.append(self._pending.popleft())
            fut = pool.submit(fn, *args)
            self._pending.append(fut)
        for d in done:
            d.result()  # raise the first failure early
        return fut

    def copy(self, src_fd: int, src_off: int, fd: int, offset: int, nbytes: int) -> None:
        self._submit(self._copier, _copy_range, src_fd, src_off, fd, offset, nbytes)

    def aside(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the copy thread after the copies queued so far."""
        return self._submit(self._copier, fn, *args)

    def pwrite(self, fd: int, data: memoryview, offset: int) -> Future[Any]:
        return self._submit(self._writer, _pwrite_all, fd, data, offset)

    def close(self) -> None:
        """Wait for every queued copy and write; raise the first failure."""
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    fut = self._pending.popleft()
                fut.result()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what is queued and wait for what runs (the caller is failing already)."""
        with self._lock:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
        self._copier.shutdown(wait=True)
        self._writer.shutdown(wait=True)


class _Stager:
    """One producer's ring of staging buffers: blocks are cast to the output dtype into the current buffer, which
    is written out (on the output's write thread) when full or when the next block goes elsewhere; a buffer is
    refilled only once its write is done."""

    def __init__(self, out: _Output, *, buffers: int = 4) -> None:
        self.out = out
        self.dtype = out.dtype
        self._ring: list[list[Any]] = [[torch.empty(STAGING_BYTES, dtype=torch.uint8), None] for _ in range(buffers)]
        self._cur = 0
        self._used = 0
        self._fd = -1
        self._offset = 0  # file offset of the current buffer's first byte

    def write(self, fd: int, offset: int, block: torch.Tensor) -> int:
        """Cast ``block`` into the staging ring for bytes ``offset:`` of ``fd``; return its size in bytes."""
        n = block.numel() * self.dtype.itemsize
        if fd != self._fd or offset != self._offset + self._used or self._used + n > STAGING_BYTES:
            self.flush()
            self._fd, self._offset = fd, offset
        slot = self._ring[self._cur]
        if n > slot[0].numel():  # one block larger than a staging buffer
            if slot[1] is not None:
                slot[1].result()
            slot[0] = torch.empty(n, dtype=torch.uint8)
        slot[0][self._used : self._used + n].view(self.dtype).view(block.shape).copy_(block)  # cast
        self._used += n
        return n

    def flush(self) -> None:
        if not self._used:
            return
        slot = self._ring[self._cur]
        slot[1] = self.out.pwrite(self._fd, memoryview(slot[0][: self._used].numpy()), self._offset)
        self._cur = (self._cur + 1) % len(self._ring)
        nxt = self._ring[self._cur]
        if nxt[1] is not None:
            nxt[1].result()  # its previous write must be done before it is refilled
            nxt[1] = None
        self._offset += self._used
        self._used = 0


class _Tasks:
    """The computed tensors (and the final-norm offset), shared by two workers: the main thread takes them from
    the front, the copy thread, once its copies are done, from the back; they meet in between."""

    def __init__(self, tasks: list[Callable[[_Source, _Stager], None]]) -> None:
        self._tasks = deque(tasks)
        self._lock = threading.Lock()

    def run(self, src: _Source, stager: _Stager, *, front: bool) -> None:
        while True:
            with self._lock:
                if not self._tasks:
                    break
                task = self._tasks.popleft() if front else self._tasks.pop()
            task(src, stager)
        stager.flush()

    def cancel(self) -> None:
        with self._lock:
            self._tasks.clear()


def write_weights(
    *,
    reader: TensorReader | _Source,
    plan: Plan,
    out_dir: Path,
    out_dtype: torch.dtype,
    max_shard_size: int,
    gains: dict[str, torch.Tensor] | None = None,
    aside: Callable[[_Source], Any] | None = None,
    aside_reads: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Stream every target tensor of ``plan`` into safetensors shards + index under ``out_dir``.

    Each shard's header is written first and its full size reserved (a full disk fails here, before any
    weight is read). Tensors the mapping leaves byte-identical are copied file to file by the kernel; the others
    are computed block by block and written, by the main thread and, once its copies are done, the copy thread
    (:class:`_Tasks`, with a :meth:`_Source.twin` of the source); ``aside`` (the final-norm offset) is one more such
    task (reading ``aside_reads``). Then every source tensor not checked finite yet is checked: the copied ones, and
    those no step reads (dropped biases, RoPE buffers)."""
    src = reader if isinstance(reader, _Source) else _Source(reader)
    shards = plan_shards(plan.steps, itemsize=out_dtype.itemsize, max_bytes=max_shard_size)
    weight_map: dict[str, str] = {}
    progress = Progress(sum(s.nbytes(out_dtype.itemsize) for s in shards), desc="convert: weights", unit="B")
    out = _Output(out_dtype)
    fds: list[int] = []
    tasks = None
    done = False
    try:
        placed: list[tuple[Step, int, int]] = []  # (step, file descriptor, offset in the file)
        for shard in shards:
            path = out_dir / shard.name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
            fds.append(fd)
            header = _header(shard, out_dtype)
            _reserve(fd, len(header) + shard.nbytes(out_dtype.itemsize), path)
            _pwrite_all(fd, memoryview(header), 0)
            pos = len(header)
            for step in shard.steps:
                placed.append((step, fd, pos))
                weight_map[step.target] = shard.name
                pos += math.prod(step.shape) * out_dtype.itemsize
        # Every kernel copy first (they need no arithmetic, so the copy thread is busy from the start), then the
        # computed tensors, whose writes go to the other I/O thread.
        computed = []
        for step, fd, pos in placed:
            if _kernel_copy(step, src, out_dtype):
                info = src.reader.info(step.sources[0])
                out.copy(src.reader.fileno(step.sources[0]), info.data_offset, fd, pos, info.nbytes)  # checked below
                progress.update(info.nbytes)  # queued: the kernel copies run while the arithmetic does
            else:
                computed.append((step, fd, pos))
        log.info("%d tensors in %d shards: %d copied as stored, %d computed", len(placed), len(shards),
                 len(placed) - len(computed), len(computed))

        def compute(step: Step, fd: int, pos: int) -> Callable[[_Source, _Stager], None]:
            def task(source: _Source, stager: _Stager) -> None:
                want, got = math.prod(step.shape) * out_dtype.itemsize, 0
                for blk in _produce(step, source, out_dtype, gains or {}):
                    got += stager.write(fd, pos + got, blk)
                if got != want:  # pragma: no cover - guards the header/data agreement
                    raise AssertionError(f"{step.target}: wrote {got} bytes, header says {want}")
                progress.update(got)
            return task

        jobs = [compute(*c) for c in computed] + ([lambda source, _stager: aside(source)] if aside else [])
        tasks = _Tasks(jobs)
        twin = None
        if src.shareable([name for step, _, _ in computed for name in step.sources] + list(aside_reads)):
            twin = src.twin()
            helper = out.aside(functools.partial(tasks.run, twin, _Stager(out), front=False))  # after the copies
        tasks.run(src, _Stager(out), front=True)
        if twin is not None:
            helper.result()
            src.checked |= twin.checked
        for name in src.reader.names():  # copied and dropped tensors: any not checked by the arithmetic
            src.check(name)
        out.close()
        progress.close()
        done = True
    finally:
        if not done:
            if tasks is not None:
                tasks.cancel()  # the helper stops after its current tensor
            out.abort()
        for fd in fds:
            os.close(fd)
    total = sum(s.nbytes(out_dtype.itemsize) for s in shards)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _reserve(fd: int, nbytes: int, path: Path) -> None:
    """Reserve the file's blocks up front where the file system can (a full disk fails now, not mid-way).

    Linux's ``fallocate`` system call, never glibc's ``posix_fallocate`` emulation, which writes every block once
    more on file systems without it (some network file systems)."""
    fallocate = _fallocate()
    if fallocate is None:
        return
    if fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(nbytes)) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return
    raise OSError(err, os.strerror(err), str(path))


@functools.lru_cache(maxsize=1)
def _fallocate() -> Any:
    """libc's ``fallocate`` (Linux), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate64 if hasattr(libc, "fallocate64") else libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


# ---- checks on the source ----------------------------------------------------------------------------------


def check_tokenizer(source: Path, cfg: dict[str, Any]) -> Path:
    """The source's SentencePiece model must exist and agree with config.json (size, bos/eos ids)."""
    from kept.tokenizer import load_sp_proto

    path = source / "tokenizer.model"
    proto = load_sp_proto(path)  # CheckpointError if missing or unreadable
    n = len(proto.pieces)
    if n > cfg["vocab_size"]:
        raise CheckpointError(f"{path}: tokenizer has {n} pieces but config.json vocab_size is {cfg['vocab_size']}")
    ts = proto.trainer_spec
    for key, sp_id in (("bos_token_id", ts.bos_id), ("eos_token_id", ts.eos_id)):
        want = cfg.get(key)
        if want is not None and want != sp_id:
            raise CheckpointError(f"{path}: tokenizer's {key.split('_')[0]} id is {sp_id}, config.json {key} is {want}")
    return path


def final_norm_offset(src: _Source) -> torch.Tensor:
    """``lm_head @ beta_f`` in float64: the per-vocab logit offset the final LayerNorm's bias adds."""
    beta = src.small("model.norm.bias").double()
    offset = torch.empty(src.reader.info("lm_head.weight").shape[0], dtype=torch.float64)
    r = 0
    for blk in src.blocks("lm_head.weight", torch.float64):
        torch.mv(blk, beta, out=offset[r : r + blk.shape[0]])
        r += blk.shape[0]
    src.verify("lm_head.weight", offset)  # also the finiteness check of lm_head.weight
    return offset


def _json(obj: dict[str, Any]) -> str:
    """Indented JSON; a non-finite number is an error naming its key (NaN is not JSON)."""
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"conversion: {key} is {value}, not a finite number")
    try:
        return json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise CheckpointError(f"conversion: a reported value is not finite ({exc})") from None


def _generation_config(source: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    src = {}
    path = source / "generation_config.json"
    if path.is_file():
        try:
            src = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    gen = {k: src[k] for k in GENERATION_KEYS if k in src}
    gen.update(bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2),
               pad_token_id=cfg.get("pad_token_id", 0))
    return gen


def _is_chat(source: Path) -> bool:
    path = source / "tokenizer_config.json"
    if not path.is_file():
        return False
    try:
        tok_cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    return bool(tok_cfg.get("chat_format") or tok_cfg.get("chat_template"))


# ---- the conversion ----------------------------------------------------------------------------------------


def convert_checkpoint(
    *,
    source: str | Path,
    output: str | Path,
    norm: str,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    calibration: str | Path | None = None,
    fidelity_tokens: int = 2048,
    fit_tokens: int = 8192,
    chat: bool | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the Orion checkpoint ``source`` into a stock Llama checkpoint at ``output``; return the fidelity
    report (also written as fidelity.json / fidelity.md, with conversion.json, next to the weights).

    ``norm``: ``paper`` | ``centered`` | ``exact`` | ``fit`` (see :mod:`kept.mapping`). ``dtype``: output dtype,
    default the source's ``torch_dtype``. ``calibration``: a packed corpus directory; required for ``fit``
    (gains fitted on its first ``fit_tokens`` tokens) and used for the fidelity report (its last
    ``fidelity_tokens`` tokens; without it a built-in multilingual sample). ``fidelity_tokens=0`` skips the
    metrics. ``chat``: write the Llama-3 chat template (default: when the source's tokenizer_config names a
    chat format). ``output`` is replaced only if an earlier conversion wrote it (:mod:`kept.atomic`), or with
    ``overwrite``; it may never be, contain or lie inside ``source`` or ``calibration``. Every source tensor is
    checked (floating dtype, expected shape, finite), including those the mapping drops. Raises a
    :class:`~kept.errors.KeptError` naming the file, tensor or key on bad input, and then leaves ``output`` as
    it was.
    """
    from kept.chat import LLAMA3_TEMPLATE
    from kept.fidelity import (
        builtin_tokens,
        calibration_tokens,
        check_ids,
        fidelity_markdown,
        fidelity_report,
        fit_rms_gains,
        split_batches,
    )
    from kept.card import source_card_metadata, write_model_card
    from kept.tokenizer import runtime_warnings, write_tokenizer

    source, output = Path(source), Path(output)
    bound_heap()
    if norm not in NORMS:
        raise ConfigError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if norm == "fit" and calibration is None:
        raise ConfigError("norm 'fit' needs calibration text: pass calibration=<packed corpus dir>")
    if fidelity_tokens < 0 or fit_tokens <= 0:
        raise ConfigError(f"fidelity_tokens ({fidelity_tokens}) must be >= 0 and fit_tokens ({fit_tokens}) > 0")
    max_bytes = parse_size(max_shard_size)
    inputs = [source] + ([Path(calibration)] if calibration is not None else [])
    check_output(output, inputs=inputs, overwrite=overwrite, hint=OVERWRITE_HINT)

    cfg = read_orion_config(source)
    tok_model = check_tokenizer(source, cfg)
    tok_warnings = runtime_warnings(tok_model)
    for w in tok_warnings:
        log.warning("tokenizer: %s (%s). %s What to do: %s", w["property"], w["detail"], w["effect"], w["advice"])
    with TensorReader(source) as reader:
        for name in reader.names():
            info = reader.info(name)
            if info.dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{source / info.file}: tensor {name!r} has dtype {str(info.dtype).removeprefix('torch.')}; "
                    "a checkpoint's weights must be floating point (float16, bfloat16, float32 or float64)"
                )
        shapes = {n: reader.info(n).shape for n in reader.names()}
        emb = shapes.get("model.embed_tokens.weight")
        if emb is not None and emb[0] != cfg["vocab_size"]:
            raise CheckpointError(
                f"{source / 'config.json'}: vocab_size {cfg['vocab_size']} differs from the {emb[0]} rows of "
                "model.embed_tokens.weight"
            )
        out_name = dtype or str(cfg.get("torch_dtype") or "")
        if out_name not in DTYPES:
            out_name = str(reader.info("model.embed_tokens.weight").dtype).removeprefix("torch.")
            if out_name not in DTYPES:
                raise CheckpointError(f"{source}: cannot infer an output dtype from {out_name}; pass dtype=")
        out_dtype = DTYPES[out_name]
        plan = plan_conversion(orion_cfg=cfg, source_shapes=shapes, norm=norm, dtype=out_name)

        gains = None
        if norm == "fit":
            fit_ids = calibration_tokens(calibration, n_tokens=fit_tokens)
            check_ids(fit_ids, cfg["vocab_size"], f"{calibration}")
            log.info("fit: teacher activations on %d calibration tokens", fit_ids.numel())
            manifest = json.loads((Path(calibration) / "manifest.json").read_text())
            if fidelity_tokens and manifest.get("num_sequences", 0) * manifest.get("max_length", 0) < (
                    fit_tokens + fidelity_tokens):
                log.warning("calibration corpus %s is smaller than fit_tokens + fidelity_tokens: the fitting and "
                            "the fidelity batches overlap, which flatters the fit mapping", calibration)
            gains = fit_rms_gains(teacher=source, batches=split_batches(fit_ids), device=device)
            for site, g in gains.items():
                if not bool(torch.isfinite(g).all()):
                    raise CheckpointError(f"{calibration}: fitted gain {site!r} is not finite")

        src = _Source(reader, arith=arith_dtype(out_dtype))
        chat = _is_chat(source) if chat is None else chat
        with atomic_dir(output, inputs=inputs, overwrite=overwrite, hint=OVERWRITE_HINT) as tmp:
            offsets: list[torch.Tensor] = []
            write_weights(reader=src, plan=plan, out_dir=tmp, out_dtype=out_dtype, max_shard_size=max_bytes,
                          gains=gains, aside=lambda s: offsets.append(final_norm_offset(s)),
                          aside_reads=("lm_head.weight", "model.norm.bias"))
            offset = offsets[0]
            same_head = reader.info("lm_head.weight").dtype == out_dtype  # the head is copied as stored
            del src  # release the work buffers before the fidelity pass
            (tmp / "config.json").write_text(json.dumps(plan.llama_config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(_generation_config(source, cfg), indent=2) + "\n")
            write_tokenizer(model_file=tok_model, output=tmp, model_max_length=cfg["max_position_embeddings"],
                            chat_template=LLAMA3_TEMPLATE if chat else None)

            report: dict[str, Any] = {
                "norm": norm,
                "centered": norm in CENTRED_NORMS,
                "source": str(source),
                "dtype": out_name,
                "final_norm_logit_offset_norm": float(torch.linalg.vector_norm(offset)),
                "n_tokens": 0,
                "kl_mean": None,
                "kl_max": None,
                "top1_agreement": None,
                "max_abs_dlogit": None,
                "layer_rel_err": [],
                "mapping": plan.table,
                "dropped": plan.dropped_table,
            }
            if fidelity_tokens:
                if calibration is not None:
                    ids = calibration_tokens(calibration, n_tokens=fidelity_tokens, from_end=True)
                    report["calibration"] = f"{calibration} (last sequences)"
                else:
                    ids = builtin_tokens(tok_model)[:, :fidelity_tokens]
                    report["calibration"] = "built-in multilingual sample"
                check_ids(ids, cfg["vocab_size"], str(calibration or tok_model))
                report.update(fidelity_report(
                    teacher=source, student=tmp, centred=norm in CENTRED_NORMS, ids=ids,
                    logit_offset=offset if norm == "exact" else None, device=device,
                    progress=_layer_progress(cfg["num_hidden_layers"]), same_head=same_head,
                ))
            (tmp / "fidelity.json").write_text(_json(report))
            (tmp / "fidelity.md").write_text(fidelity_markdown(report))
            conversion = {
                "norm": norm,
                "centered": norm in CENTRED_NORMS,
                "source": str(source),
                "dtype": out_name,
                "final_norm_logit_offset_norm": report["final_norm_logit_offset_norm"],
                "chat_template": "llama3" if chat else None,
                "tokenizer_warnings": tok_warnings,
                "source_card": source_card_metadata(source, calibration=calibration),
            }
            (tmp / "conversion.json").write_text(_json(conversion))
            write_model_card(tmp)
    return report


def _layer_progress(n_layers: int) -> Any:
    """The fidelity pass's per-layer callback as progress lines (layers done, rate, ETA, the layer's error)."""
    bar = Progress(n_layers, desc="convert: fidelity", unit="layer")

    def report(message: str) -> None:
        bar.set_postfix(last=message.removeprefix("fidelity: "))
        bar.update(1)

    return report


def cli(argv: list[str]) -> int:
    """``kept convert SOURCE OUTPUT --norm ...``"""
    ap = argparse.ArgumentParser(prog="kept convert", description="Convert an Orion checkpoint to stock Llama.")
    ap.add_argument("source", help="Orion checkpoint directory, or a hub id REPO@REVISION (weights/config/tokenizer only)")
    ap.add_argument("output", help="output directory (written atomically)")
    ap.add_argument("--norm", required=True, choices=NORMS, help="LayerNorm -> RMSNorm mapping")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="output dtype (default: the source's)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    ap.add_argument("--calibration", default=None, help="packed corpus dir (needed for --norm fit; fidelity report)")
    ap.add_argument("--fidelity-tokens", type=int, default=2048, help="tokens for the fidelity report (0: skip)")
    ap.add_argument("--fit-tokens", type=int, default=8192, help="calibration tokens for --norm fit")
    ap.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                    help="write the Llama-3 chat template (default: if the source is a chat model)")
    ap.add_argument("--device", default="cpu", help="device for the fit and fidelity forward passes")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace OUTPUT even if it holds files kept did not write (never the source itself)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kept.source import resolve_source

    local = [args.source] if Path(args.source).is_dir() else []
    check_output(args.output, inputs=local, overwrite=args.overwrite, hint=OVERWRITE_HINT)  # before any download
    source = resolve_source(args.source, cache_dir=Path(args.output).parent / ".sources")
    report = convert_checkpoint(
        source=source, output=args.output, norm=args.norm, dtype=args.dtype, max_shard_size=args.max_shard_size,
        calibration=args.calibration, fidelity_tokens=args.fidelity_tokens, fit_tokens=args.fit_tokens,
        chat=args.chat, device=args.device, overwrite=args.overwrite,
    )
    summary = {k: report.get(k) for k in ("norm", "n_tokens", "kl_mean", "top1_agreement", "max_abs_dlogit",
                                          "final_norm_logit_offset_norm")}
    print(json.dumps(summary, indent=2))
    return 0
