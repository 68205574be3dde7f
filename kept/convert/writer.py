"""The streaming writer: source tensors read through mapped windows, every byte checked, the target written
straight into safetensors shards whose headers are planned before any weight is read.

One source tensor is read at a time (:class:`kept.checkpoint.TensorReader`, through mapped windows of the page
cache): a tensor the mapping leaves byte-identical is copied file to file by the kernel, the others are computed
in cache-sized row blocks (:mod:`kept.convert.ops`). Copies and writes run on two I/O threads beside the
arithmetic. Every source tensor is checked (floating dtype, shape, finite values, the dropped ones included).
Resident memory stays near a window plus a few buffers, whatever the checkpoint's size.
"""


from __future__ import annotations

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

from kept.checkpoint import ST_CODES, TensorReader, all_finite
from kept.errors import CheckpointError, ConfigError
from kept.convert.plan import Plan, Step
from kept.progress import Progress

log = logging.getLogger(__name__)

BLOCK_BYTES = 2**20  # float64 working block of the row-wise arithmetic (stays in cache)
WINDOW_BYTES = 64 * 2**20  # source bytes mapped at once
STAGING_BYTES = 2**20  # output bytes gathered per write call (four such buffers in flight; small enough to stay
# in cache between the cast and the write: 8 MiB buffers cost the 2.2 GB bench conversion ~0.8 s more CPU)
COPY_BYTES = 8 * 2**20  # buffer of the copy fallback where the kernel cannot copy between the files
INDEX = "model.safetensors.index.json"


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

    def blocks(self, name: str, dtype: torch.dtype | None = None, *,
               rows: tuple[int, ...] | None = None) -> Iterator[torch.Tensor]:
        """Row blocks of ``name`` (or of its rows ``rows``, in that order) copied into the work buffer of ``dtype``
        (default :attr:`arith`), each valid until the next; unchecked: the caller passes a reduction over all of
        them to :meth:`verify` (row selections are checked whole at the end, see :func:`write_weights`)."""
        dtype = dtype or self.arith
        ti = self.reader.info(name)
        cols = math.prod(ti.shape[1:]) if len(ti.shape) > 1 else 1
        per = max(1, BLOCK_BYTES // (dtype.itemsize * cols))
        if dtype not in self._work or per * cols > self._work[dtype].numel():
            self._work[dtype] = torch.empty(max(per * cols, BLOCK_BYTES // dtype.itemsize), dtype=dtype)
        buf = self._work[dtype]
        if rows is not None:
            yield from self._gathered(name, rows, per, buf)
            return
        rows = per
        for win in self.windows(name, rows_per_block=rows, check=False):
            flat = win.reshape(win.shape[0], -1) if win.dim() > 1 else win.reshape(-1, 1)
            for r in range(0, flat.shape[0], rows):
                src = flat[r : r + rows]
                work = buf[: src.numel()].view(src.shape)
                work.copy_(src)
                yield work

    def _gathered(self, name: str, rows: tuple[int, ...], per: int, buf: torch.Tensor) -> Iterator[torch.Tensor]:
        """Blocks of the selected rows: each block's rows come from one mapped span of the source."""
        ti = self.reader.info(name)
        index = torch.tensor(rows, dtype=torch.long)
        cols = math.prod(ti.shape[1:])
        for start in range(0, len(rows), per):
            idx = index[start : start + per]
            lo, hi = int(idx.min()), int(idx.max()) + 1
            span = self.reader.mapped_rows(name, lo, hi) if ti.dense else self.reader.get_rows(name, lo, hi)
            work = buf[: idx.numel() * cols].view(idx.numel(), *ti.shape[1:])
            work.copy_(span[idx - lo])
            yield work
            del span

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
    from kept.convert.ops import kernel_span, produce

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
            span = kernel_span(step, src, out_dtype)
            if span is not None:
                out.copy(src.reader.fileno(step.sources[0]), span[0], fd, pos, span[1])  # checked below
                progress.update(span[1])  # queued: the kernel copies run while the arithmetic does
            else:
                computed.append((step, fd, pos))
        log.info("%d tensors in %d shards: %d copied as stored, %d computed", len(placed), len(shards),
                 len(placed) - len(computed), len(computed))

        def compute(step: Step, fd: int, pos: int) -> Callable[[_Source, _Stager], None]:
            def task(source: _Source, stager: _Stager) -> None:
                want, got = math.prod(step.shape) * out_dtype.itemsize, 0
                for blk in produce(step, source, out_dtype, gains or {}):
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


