"""Outputs we own: written whole or not at all, and never replacing anything we did not write ourselves.

One rule for every writer of a file or directory output (conversions, trained models and snapshots, the teacher
cache, evaluation outputs, the corpus, the world ...):

* **Atomic**: the output is written into a temporary sibling ``.tmp-<name>-<host>-<pid>-<random>`` and renamed into
  place only when complete, so a crash or kill mid-write never leaves an output that looks complete.
* **Ownership**: a directory output carries the marker file :data:`MARKER`. An existing ``final`` is replaced only
  if it carries the marker (we wrote it) or holds no files (empty, or only empty directories, as Snakemake creates
  them for a job's declared outputs); anything else -- a foreign directory, a file -- is refused
  with one line saying why, unless the caller passes ``overwrite=True`` (the user asked, e.g.
  ``kept convert --overwrite``). An output that equals, contains or lies inside one of its own inputs is always
  refused: replacing it would delete the input.
* **Stale temporaries**: a temporary sibling is recognisably ours (its name carries this host's tag and the pid
  that made it); one whose process is gone is removed by the next writer of the same output. Temporaries of
  other hosts, of live processes, or that do not follow the pattern are left alone.
* **OS faults** (disk full, read-only file system, permission denied) become an :class:`~kept.errors.OutputError`
  that names the path and what to do, after the temporary is removed.

:func:`lock_directory` is the same rule for a whole run: one live writer of a results directory at a time.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from kept.errors import OutputError

log = logging.getLogger(__name__)

MARKER = ".kept-output"  # in every directory output we write; its presence is what makes a directory ours
MARKER_TEXT = '{"written_by": "kept"}\n'  # constant: two identical runs write identical outputs
LOCK = ".kept-run.lock"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-")

_ADVICE = {
    errno.ENOSPC: "the file system is full: free space there or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free space there or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or ulimit allows: write elsewhere",
    errno.EROFS: "the file system is read-only: write to a writable directory",
    errno.EACCES: "fix the permissions of that path or use another",
    errno.EPERM: "fix the permissions of that path or use another",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_fault(
    exc: OSError, *, path: str | os.PathLike, tmp: str | None = None, output: bool = True
) -> OutputError | None:
    """An :class:`OutputError` for an OS fault a user can act on (None for other errors). It names the file
    the OS names, else ``path``; a path inside a temporary (whose name starts with ``tmp``) is shown at its
    final place under ``path``. ``output``: ``path`` is an output, which was left as it was."""
    advice = _ADVICE.get(exc.errno or 0)
    if advice is None:
        return None
    where = str(exc.filename) if exc.filename else str(path)
    if tmp is not None and where.startswith(tmp):
        rest = where[len(tmp) :]
        where = str(path) + (rest[rest.index(os.sep) :] if os.sep in rest else "")
    tail = f"; {path} was left as it was" if output else ""
    return OutputError(f"{where}: {exc.strerror or exc} ({advice}){tail}")


@contextlib.contextmanager
def os_faults(path: str | os.PathLike, *, tmp: str | None = None) -> Iterator[None]:
    """Turn the OS faults of :data:`_ADVICE` raised inside into :class:`OutputError` naming the file, for the
    output ``path``."""
    try:
        yield
    except OSError as exc:
        fault = os_fault(exc, path=path, tmp=tmp)
        if fault is None:
            raise
        raise fault from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory output this package wrote (it carries :data:`MARKER`)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def holds_files(path: str | os.PathLike) -> bool:
    """Whether a directory holds anything but (nested) empty directories -- something that could be lost.
    (Snakemake creates the parent directories of a job's declared outputs before the job runs.)"""
    for _dirpath, dirnames, filenames in os.walk(path, onerror=_raise):
        if filenames or any(os.path.islink(os.path.join(_dirpath, d)) for d in dirnames):
            return True
    return False


def _raise(exc: OSError) -> None:
    raise exc


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def check_output(
    final: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
    hint: str = "choose another output path or move it away",
) -> None:
    """Refuse (:class:`OutputError`, one line) an output that may not be written at ``final``.

    Always refused: ``final`` equal to an input, containing one, or inside one. Refused unless ``overwrite``:
    an existing ``final`` that is not ours (:func:`is_ours`) and holds files (:func:`holds_files`). ``hint`` ends
    the message (what the user can do)."""
    final = Path(final)
    target = _resolved(final)
    for src in inputs:
        s = _resolved(src)
        if target == s:
            raise OutputError(f"{final}: the output is the input {src}; writing it would replace the input: "
                              "choose another output path")
        if target in s.parents:
            raise OutputError(f"{final}: the output contains the input {src}; replacing it would delete the "
                              "input: choose another output path")
        if s in target.parents:
            raise OutputError(f"{final}: the output lies inside the input {src}: choose an output path outside it")
    if not (final.exists() or final.is_symlink()):
        return
    if final.is_dir() and not final.is_symlink():
        if is_ours(final) or overwrite:
            return
        try:
            if not holds_files(final):
                return
        except OSError as exc:
            raise os_fault(exc, path=final) or exc from None
        raise OutputError(f"{final}: exists and was not written by kept (no {MARKER} marker); refusing to "
                          f"replace it: {hint}")
    if not overwrite:
        kind = "a symbolic link" if final.is_symlink() else "a file"
        raise OutputError(f"{final}: exists and is {kind}, not a kept output directory; refusing to replace it: "
                          f"{hint}")


def remove_output(path: str | os.PathLike) -> None:
    """Delete a directory output this package wrote (:func:`is_ours`) or one holding no files; anything else is
    refused with an :class:`OutputError`. A missing ``path`` is fine."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    with os_faults(path):
        if is_ours(path) or (path.is_dir() and not path.is_symlink() and not holds_files(path)):
            shutil.rmtree(path)
            return
    raise OutputError(f"{path}: not written by kept (no {MARKER} marker); refusing to delete it: move it away")


def _tmp_prefix(final: Path) -> str:
    return f".tmp-{final.name}-{_HOST}-{os.getpid()}-"


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``final`` that a killed writer on this host left behind (see the
    module docstring for what counts as ours and stale); return them."""
    final = Path(final)
    removed: list[Path] = []
    prefix = f".tmp-{final.name}-"
    try:
        siblings = list(final.parent.iterdir()) if final.parent.is_dir() else []
    except OSError:
        return removed
    for path in siblings:
        if not path.name.startswith(prefix):
            continue
        m = _TMP.match(path.name[len(prefix) :])
        if not m or m.group("host") != _HOST:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                if not (path / MARKER).is_file() and any(path.iterdir()):
                    continue  # not recognisably ours after all
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
            else:
                continue
        except OSError as exc:  # pragma: no cover - e.g. a read-only parent; the write will say so
            log.warning("could not remove stale temporary %s (%s)", path, exc)
            continue
        log.info("removed %s, left by a killed run (pid %d)", path, pid)
        removed.append(path)
    return removed


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` (already checked) is moved aside first and removed
    after, so there is no moment without a complete output that a crash could leave."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        aside = final.parent / (_tmp_prefix(final) + "old-" + secrets.token_hex(4))
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.rename(tmp, final)


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
    hint: str = "choose another output path or move it away",
) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; on success it replaces ``final``.

    ``final`` is checked first (:func:`check_output` with ``inputs``/``overwrite``/``hint``) and again just
    before the replacement. The temporary carries :data:`MARKER`, so the output does too. Stale temporaries of
    ``final`` are cleaned first. OS faults become :class:`OutputError`; on any failure the temporary is removed
    and ``final`` is left as it was."""
    final = Path(final)
    inputs = list(inputs)
    check_output(final, inputs=inputs, overwrite=overwrite, hint=hint)
    prefix = str(final.parent / _tmp_prefix(final))
    with os_faults(final, tmp=prefix):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final), dir=final.parent))
    try:
        with os_faults(final, tmp=prefix):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs follow the umask like any other file
            (tmp / MARKER).write_text(MARKER_TEXT)
            yield tmp
            (tmp / MARKER).write_text(MARKER_TEXT)  # in case the body replaced the directory's contents
            check_output(final, inputs=inputs, overwrite=overwrite, hint=hint)
            _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it over ``final`` once closed. OS faults become
    :class:`OutputError`; on failure the temporary is removed."""
    final = Path(final)
    prefix = str(final.parent / _tmp_prefix(final))
    with os_faults(final, tmp=prefix):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final)
        fd, name = tempfile.mkstemp(prefix=_tmp_prefix(final), dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with os_faults(final, tmp=prefix):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
            with open(tmp, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_json(obj: Any, *, allow_nan: bool = True) -> str:
    """Indented, key-sorted JSON; with ``allow_nan=False`` a NaN or infinity is a ValueError (it is not JSON)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=allow_nan) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, allow_nan: bool = True) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (see :func:`dumps_json`)."""
    text = dumps_json(obj, allow_nan=allow_nan)
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


# ---- one live run per results directory --------------------------------------------------------------------

_HELD: dict[Path, int] = {}


def _lock_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def lock_directory(directory: str | os.PathLike, *, what: str = "run") -> Path:
    """Take the run lock of ``directory`` (file :data:`LOCK` in it), or raise :class:`OutputError` naming the
    live run that holds it. The lock is an ``flock`` on that file, held until :func:`unlock_directory` or the
    process ends, so a killed run leaves no lock behind (its file stays, recording the last holder). Where the
    file system has no ``flock``, the recorded pid and host decide: a dead pid on this host is a stale lock."""
    import fcntl

    directory = Path(directory)
    with os_faults(directory):
        directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    key = _resolved(path)
    if key in _HELD:
        return path
    record = {"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(), "what": what,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with os_faults(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(directory, path, _lock_record(path)) from None
        except OSError as exc:  # no flock on this file system: judge by the recorded pid and host
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            other = _lock_record(path)
            if other.get("pid") and (other.get("host") != socket.gethostname() or _alive(int(other["pid"]))):
                raise _busy(directory, path, other) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd
    return path


def _busy(directory: Path, path: Path, other: dict[str, Any]) -> OutputError:
    who = (f"pid {other.get('pid', '?')} on {other.get('host', '?')}, started {other.get('started', '?')} "
           f"in {other.get('cwd', '?')}")
    return OutputError(f"{directory}: another {other.get('what', 'run')} is writing this directory ({who}); "
                       f"wait for it to finish or use another results directory (the lock is {path})")


def unlock_directory(directory: str | os.PathLike) -> None:
    """Release the lock :func:`lock_directory` took (a no-op if this process does not hold it)."""
    import fcntl

    fd = _HELD.pop(_resolved(Path(directory) / LOCK), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
