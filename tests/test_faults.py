"""Fault injection (issue 12): bad inputs, hostile paths, OS faults, a leaky judge endpoint, two runs at once.

Every case runs a ``kept`` command (in-process through ``kept.cli.main``, whose return value is the exit status;
a real process where noted) inside its own directory tree and asserts three things: the exit status, that the
message names the file, tensor or key at fault, and that no byte outside the job's own output changed (every
file of the tree is hashed before and after). The table of cases -- case, expected, observed -- is printed at
the end of the module (``pytest -s tests/test_faults.py``) and written to ``$KEPT_FAULTS_TABLE`` when set.

OS faults are injected at the system-call boundary (``os.pwrite``, ``os.copy_file_range``,
libc's ``fallocate``, ``os.mkdir``, ``io.open`` raising the errno a full disk, a read-only file system or a
missing permission gives), so they are deterministic and do not need root or a special file system.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from tiny_orion import make_corpus, make_orion_checkpoint, train_sp

from kept import atomic
from kept.cli import main as kept_main

KEPT = str(Path(sys.executable).with_name("kept"))
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
INDEX = "pytorch_model.bin.index.json"
KEY = "sk-fault-" + "5f3a9c1e7b2d4068"
ROWS: list[tuple[str, str, str]] = []


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    sp = train_sp(root / "sp.model", byte_fallback=True)
    src = make_orion_checkpoint(root / "orion", sp_model=sp, layers=1)
    index = json.loads((src / INDEX).read_text())
    with_rope = root / "orion-rope"
    shutil.copytree(src, with_rope)
    _edit_tensors(with_rope, lambda s: s.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq",
                                                     torch.rand(8)), name="model.layers.0.self_attn.rotary_emb.inv_freq")
    from kept.convert.tiny import make_checkpoint

    families = {f"{fam}{tag}": make_checkpoint(root / f"{fam}{tag}", fam, num_hidden_layers=1, **cfg)
                for fam, tag, cfg in (("olmo", "", {}), ("stablelm", "-qkln", {"qk_layernorm": True}),
                                      ("gpt_neox", "", {}), ("phi", "", {}), ("phi3", "", {}), ("internlm2", "", {}),
                                      ("persimmon", "", {}), ("qwen2", "", {}), ("nemotron", "", {}),
                                      ("gemma", "", {}))}
    from kept.convert.tiny import new_model

    sharded = root / "qwen2-sharded"  # save_pretrained's index over several safetensors shards
    vocab = json.loads((families["qwen2"] / "config.json").read_text())["vocab_size"]
    new_model("qwen2", vocab_size=vocab, num_hidden_layers=2).save_pretrained(sharded, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(families["qwen2"] / name, sharded / name)
    families["qwen2-sharded"] = sharded
    yield {"sp": sp, "src": src, "rope": with_rope, "shards": sorted(set(index["weight_map"].values())),
           "corpus": make_corpus(root / "corpus", sp_model=sp), **families}
    table = ["| case | expected | observed |", "|---|---|---|"]
    table += [f"| {c} | {e} | {o.replace('|', '/')} |" for c, e, o in ROWS]
    text = "\n".join(table) + "\n"
    print(f"\n\nFault-injection suite: {len(ROWS)} cases\n\n{text}")
    if os.environ.get("KEPT_FAULTS_TABLE"):
        Path(os.environ["KEPT_FAULTS_TABLE"]).write_text(text)


def _edit_tensors(src: Path, edit, *, name: str | None = None, shard: str | None = None) -> None:
    """Load one shard (trusted: the test wrote it), edit its dict, save it back; ``name`` is added to the index."""
    index = json.loads((src / INDEX).read_text())
    shard = shard or sorted(set(index["weight_map"].values()))[0]
    state = torch.load(src / shard, weights_only=True)
    edit(state)
    torch.save(state, src / shard)
    if name is not None:
        index["weight_map"][name] = shard
        (src / INDEX).write_text(json.dumps(index))


def _poison(name: str, value: float):
    def edit(state):
        state[name] = state[name].clone()
        state[name].view(-1)[1] = value
    return edit


def _shard_of(src: Path, name: str) -> str:
    return json.loads((src / INDEX).read_text())["weight_map"][name]


def tree(root: Path) -> dict[str, str]:
    """Every file, directory and link under ``root`` -> a digest of its content (or kind)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = "link" if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
                continue
            with open(p, "rb") as fh:  # builtins.open: a case may patch io.open (pathlib's)
                out[str(p.relative_to(root))] = hashlib.sha256(fh.read()).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@dataclass
class Ctx:
    root: Path
    pristine: dict
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    name: str
    expected: str
    extra: dict = field(default_factory=dict)

    def src(self, which: str = "src") -> Path:
        """A fresh copy of the tiny Orion checkpoint inside this case's tree."""
        dst = self.root / "models" / ("orion" if which == "src" else which)  # a copy: cases edit it
        if not dst.exists():
            shutil.copytree(self.pristine[which], dst)
        return dst

    def reconfigured(self, which: str, **keys) -> Path:
        """A fresh copy of ``which`` with ``keys`` set in its config.json."""
        src = self.src(which)
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, **keys}))
        return src

    def run(self, argv: list[str], *, status: int, needles: tuple[str, ...] = (), own: tuple[Path, ...] = (),
            absent: tuple[str, ...] = (), before: dict[str, str] | None = None, note: str = "") -> str:
        """Run ``kept argv`` in-process; check the exit status, the message, and the tree outside ``own``."""
        before = tree(self.root) if before is None else before
        self.capsys.readouterr()
        rc = kept_main(argv)
        out, err = self.capsys.readouterr()
        return self.check(rc, out + err, status=status, needles=needles, own=own, absent=absent, before=before,
                          note=note)

    def check(self, rc: int, text: str, *, status: int, needles: tuple[str, ...], own: tuple[Path, ...],
              absent: tuple[str, ...], before: dict[str, str], note: str = "", error: str = ": error: ") -> str:
        """The exit status, the one error line (holding ``error``) and its needles, no secret in ``text``, and no
        change in the tree outside ``own``; records the table row."""
        assert "Traceback" not in text, text[-2000:]
        lines = [ln for ln in text.splitlines() if error in ln]
        message = lines[-1] if lines else ""
        assert rc == status, f"exit {rc}, expected {status}: {text[-2000:]}"
        assert len(lines) == (1 if status else 0), text[-2000:]  # failures say so in one line
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        for secret in absent:
            assert secret not in text, "a secret reached the output"
        after = tree(self.root)
        mine = {str(p.relative_to(self.root)) for p in own}
        outside = {c for c in changed(before, after) if not any(c == m or c.startswith(m + os.sep) for m in mine)}
        assert not outside, f"changed outside the job's own output: {sorted(outside)[:5]}"
        observed = f"exit {rc}: {message or note}"
        ROWS.append((self.name, self.expected, observed.replace(str(self.root) + os.sep, "")[:220]))
        return message


CASES: dict[str, tuple[str, Callable[[Ctx], None]]] = {}


def case(name: str, expected: str):
    def register(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CASES[name] = (expected, fn)
        return fn
    return register


def convert(ctx: Ctx, src: Path, out: Path, *extra: str, norm: str | None = "paper") -> list[str]:
    """``kept convert``'s argv (``norm`` None: no --norm, the default mapping)."""
    return ["convert", str(src), str(out), *(["--norm", norm] if norm else []), "--fidelity-tokens", "0", *extra]


# ---- where the output goes ------------------------------------------------------------------------------------


@case("convert SRC $(dirname SRC), real process", "exit 1, names the source; nothing changes")
def _parent_of_source(ctx: Ctx) -> None:
    src = ctx.src()
    before = tree(ctx.root)
    proc = subprocess.run([KEPT, *convert(ctx, src, src.parent)], capture_output=True, text=True, timeout=300)
    msg = ctx.check(proc.returncode, proc.stderr, status=1, needles=(str(src), "contains the input"), own=(),
                    absent=(), before=before)
    assert msg.startswith("kept convert: error:")


@case("convert SRC NONEMPTY_DIR, real process", "exit 1, names OUT and --overwrite; nothing changes")
def _foreign_output(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = tree(ctx.root)
    proc = subprocess.run([KEPT, *convert(ctx, src, out)], capture_output=True, text=True, timeout=300)
    ctx.check(proc.returncode, proc.stderr, status=1, needles=(str(out), "not written by kept", "--overwrite"),
              own=(), absent=(), before=before)


@case("convert SRC SRC", "exit 1, output is the input")
def _same(ctx: Ctx) -> None:
    src = ctx.src()
    ctx.run(convert(ctx, src, src), status=1, needles=(str(src), "is the input"))


@case("convert SRC SRC/sub", "exit 1, output inside the input")
def _inside(ctx: Ctx) -> None:
    src = ctx.src()
    ctx.run(convert(ctx, src, src / "llama"), status=1, needles=("lies inside the input",))


@case("convert SRC LINK (symlink to SRC)", "exit 1, output is the input")
def _link(ctx: Ctx) -> None:
    src = ctx.src()
    (ctx.root / "link").symlink_to(src)
    ctx.run(convert(ctx, src, ctx.root / "link"), status=1, needles=("is the input",))


@case("convert SRC FILE", "exit 1, names the file")
def _file(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "notes.txt"
    out.write_text("keep me")
    ctx.run(convert(ctx, src, out), status=1, needles=(str(out), "is a file"))


@case("convert with OUT containing the calibration corpus", "exit 1, names the corpus")
def _calibration_inside(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "work"
    corpus = out / "corpus"
    shutil.copytree(ctx.pristine["corpus"], corpus)
    (out / atomic.MARKER).write_text(atomic.MARKER_TEXT)  # even an output of ours
    ctx.run(convert(ctx, src, out, "--calibration", str(corpus)), status=1,
            needles=(str(corpus), "contains the input"))


@case("convert SRC NONEMPTY_DIR --overwrite", "exit 0, OUT replaced; nothing else changes")
def _overwrite(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "old"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"x")
    ctx.run(convert(ctx, src, out, "--overwrite"), status=0, own=(out,), note="OUT replaced; nothing else changed")
    assert not (out / "stale.bin").exists() and (out / atomic.MARKER).is_file()


@case("rerun into its own earlier output", "exit 0, replaced (marker); nothing else changes")
def _rerun(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "llama"
    assert kept_main(convert(ctx, src, out)) == 0
    ctx.run(convert(ctx, src, out, norm="centered"), status=0, own=(out,), note="own output replaced")
    assert json.loads((out / "conversion.json").read_text())["norm"] == "centered"


@case("stale .tmp-OUT-* of a killed run (dead pid)", "exit 0, ours removed; a foreign .tmp-* kept")
def _stale_tmp(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "llama"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = ctx.root / f".tmp-llama-{atomic._HOST}-{dead}-abc123"
    stale.mkdir()
    (stale / atomic.MARKER).write_text(atomic.MARKER_TEXT)
    (stale / "model-00001-of-00001.safetensors").write_bytes(b"half")
    foreign = ctx.root / ".tmp-llama-notours"
    foreign.mkdir()
    (foreign / "x").write_text("someone else's")
    ctx.run(convert(ctx, src, out), status=0, own=(out, stale),
            note="stale temporary removed, foreign .tmp-* kept")
    assert not stale.exists() and (foreign / "x").is_file()


@case("kill -9 mid-conversion, then rerun (real processes)", "killed run leaves only its .tmp-*; rerun exit 0, removes it")
def _killed(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "llama"
    argv = [KEPT, *convert(ctx, src, out)]
    argv[argv.index("--fidelity-tokens") + 1] = "16"  # the fidelity pass keeps the temporary alive a while
    before = tree(ctx.root)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(ctx.root.glob(".tmp-llama-*/config.json")) and time.monotonic() < deadline:
        time.sleep(0.02)  # weights written, fidelity pass under way
    proc.kill()
    assert proc.wait() == -9
    left = list(ctx.root.glob(".tmp-llama-*"))
    assert len(left) == 1 and not out.exists()
    ctx.run(convert(ctx, src, out), status=0, own=(out, left[0]), before=before,
            note="killed run's temporary removed by the rerun")
    assert not list(ctx.root.glob(".tmp-*"))


# ---- bad tensors --------------------------------------------------------------------------------------------


def _bad_tensor(ctx: Ctx, name: str, value: float, norm: str, *, which: str = "src") -> None:
    src = ctx.src(which)
    _edit_tensors(src, _poison(name, value), shard=_shard_of(src, name))
    ctx.run(convert(ctx, src, ctx.root / "out", norm=norm), status=1, needles=(repr(name), "NaN or Inf"))


@case("Inf in a LayerNorm bias, --norm paper (dropped)", "exit 1, names the tensor")
def _inf_ln_bias_paper(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.input_layernorm.bias", float("inf"), "paper")


@case("NaN in a LayerNorm bias, --norm centered (dropped)", "exit 1, names the tensor")
def _nan_ln_bias_centered(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.post_attention_layernorm.bias", float("nan"), "centered")


@case("-Inf in a LayerNorm bias, --norm exact (folded)", "exit 1, names the tensor")
def _inf_ln_bias_exact(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.input_layernorm.bias", float("-inf"), "exact")


@case("NaN in model.norm.bias, --norm paper", "exit 1, names the tensor")
def _nan_final_bias(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.norm.bias", float("nan"), "paper")


@case("Inf in q_proj (kernel-copied), --norm paper", "exit 1, names the tensor")
def _inf_copied(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.self_attn.q_proj.weight", float("inf"), "paper")


@case("NaN in q_proj (kernel-copied, checked by its fold), --norm exact", "exit 1, names the tensor")
def _nan_folded(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.self_attn.q_proj.weight", float("nan"), "exact")


@case("Inf in down_proj (centred columns), --norm centered", "exit 1, names the tensor")
def _inf_centred(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.mlp.down_proj.weight", float("inf"), "centered")


@case("NaN in lm_head (checked by the final-norm offset), --norm paper", "exit 1, names the tensor")
def _nan_head(ctx: Ctx) -> None:
    _bad_tensor(ctx, "lm_head.weight", float("nan"), "paper")


@case("NaN in the embedding (centred rows), --norm centered", "exit 1, names the tensor")
def _nan_embedding(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.embed_tokens.weight", float("nan"), "centered")


@case("NaN in a dropped RoPE buffer", "exit 1, names the tensor")
def _nan_rope(ctx: Ctx) -> None:
    _bad_tensor(ctx, "model.layers.0.self_attn.rotary_emb.inv_freq", float("nan"), "paper", which="rope")


@case("RoPE buffer of the wrong shape", "exit 1, names the tensor and shape")
def _rope_shape(ctx: Ctx) -> None:
    src = ctx.src("rope")
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    _edit_tensors(src, lambda s: s.__setitem__(name, torch.rand(5)), shard=_shard_of(src, name))
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(repr(name), "shape"))


@case("int64 weight", "exit 1, names the tensor and dtype")
def _int_weight(ctx: Ctx) -> None:
    src = ctx.src()
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_tensors(src, lambda s: s.__setitem__(name, (s[name] * 100).long()), shard=_shard_of(src, name))
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(repr(name), "int64"))


@case("tensor in a shard but not in the index", "exit 1, names tensor and shard")
def _unindexed(ctx: Ctx) -> None:
    src = ctx.src()
    shard = ctx.pristine["shards"][0]
    _edit_tensors(src, lambda s: s.__setitem__("model.layers.0.mlp.extra.weight", torch.ones(4)), shard=shard)
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=("'model.layers.0.mlp.extra.weight'", shard))


@case("finite weights whose logits overflow (fidelity report)", "exit 1, names lm_head, no NaN written")
def _overflow(ctx: Ctx) -> None:
    src = ctx.src()
    name = "lm_head.weight"

    def huge(state):
        state[name] = state[name].clone()
        state[name][5] = 3e38
    _edit_tensors(src, huge, shard=_shard_of(src, name))
    argv = convert(ctx, src, ctx.root / "out")
    argv[argv.index("--fidelity-tokens") + 1] = "16"
    ctx.run(argv, status=1, needles=("lm_head.weight",))


@case("truncated shard", "exit 1, names the shard")
def _truncated(ctx: Ctx) -> None:
    src = ctx.src()
    shard = src / ctx.pristine["shards"][1]
    shard.write_bytes(shard.read_bytes()[:-4000])
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(shard.name,))


@case("corrupt shard index", "exit 1, names the index")
def _bad_index(ctx: Ctx) -> None:
    src = ctx.src()
    (src / INDEX).write_text('{"weight_map": ')
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(INDEX,))


# ---- OS faults --------------------------------------------------------------------------------------------------


def _disk_full_after(ctx: Ctx, budget: int) -> None:
    """os.pwrite / os.copy_file_range fail with ENOSPC once ``budget`` bytes were written."""
    state = {"left": budget}
    real_pwrite, real_copy = os.pwrite, os.copy_file_range

    def take(n: int) -> int:
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(n, state["left"])
        state["left"] -= n
        return n

    ctx.monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real_pwrite(fd, bytes(data)[: take(len(data))], off))
    ctx.monkeypatch.setattr(os, "copy_file_range",
                            lambda a, b, n, *off: real_copy(a, b, take(n), *off))


@case("disk full mid-write (ENOSPC)", "exit 1, names OUT, says full; nothing left")
def _enospc(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "out"
    _disk_full_after(ctx, 60_000)
    ctx.run(convert(ctx, src, out), status=1, needles=(str(out), "full"))


@case("disk full at the space reservation (fallocate)", "exit 1, names the shard file, says full")
def _enospc_reserve(ctx: Ctx) -> None:
    import ctypes

    import kept.convert.writer

    src, out = ctx.src(), ctx.root / "out"

    def full(fd, mode, offset, length):  # libc's fallocate failing as on a full disk
        ctypes.set_errno(errno.ENOSPC)
        return -1
    ctx.monkeypatch.setattr(kept.convert.writer, "_fallocate", lambda: full)
    ctx.run(convert(ctx, src, out), status=1, needles=(str(out / "model-00001-of-00001.safetensors"), "full"))


@case("read-only target file system (EROFS)", "exit 1, names OUT, says read-only")
def _erofs(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "ro" / "out"
    (ctx.root / "ro").mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ctx.root / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)
    ctx.monkeypatch.setattr(os, "mkdir", mkdir)
    ctx.run(convert(ctx, src, out), status=1, needles=(str(ctx.root / "ro"), "read-only"))


@case("permission denied on the output directory (EACCES)", "exit 1, names the path, says permissions")
def _eacces_out(ctx: Ctx) -> None:
    src, out = ctx.src(), ctx.root / "locked" / "out"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ctx.root / "locked")):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)
    ctx.monkeypatch.setattr(os, "mkdir", mkdir)
    ctx.run(convert(ctx, src, out), status=1, needles=(str(ctx.root / "locked"), "permissions"))


@case("permission denied reading a source shard", "exit 1, names the shard")
def _eacces_src(ctx: Ctx) -> None:
    src = ctx.src()
    shard = src / ctx.pristine["shards"][0]
    before = tree(ctx.root)
    real_open = io.open

    def guarded(file, *args, **kwargs):
        if str(file) == str(shard):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)
    ctx.monkeypatch.setattr(io, "open", guarded)
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(str(shard), "permissions"), before=before)


# ---- the judge never leaks its key ------------------------------------------------------------------------------


def _judge(ctx: Ctx, script, default, *, status: int, needles=(), retries: int = 1, timeout: float | None = None,
           note: str = ""):
    from eval_tiny import write_prompts, write_questions
    from test_judge_client import FakeOpenAI, _answer_file

    questions = write_questions(ctx.root / "question.jsonl")
    prompts = write_prompts(ctx.root / "judge_prompts.jsonl")
    answers = _answer_file(ctx.root / "model_answer" / "m-llama3.jsonl")
    out, summary = ctx.root / "judgments" / "m.jsonl", ctx.root / "mtbench.json"
    ctx.monkeypatch.setenv("KEPT_FAULT_KEY", KEY)
    import kept.eval.judge as judge

    real = judge.OpenAIChatBackend.__init__
    fast = {"sleep": lambda s: None, **({"timeout_s": timeout} if timeout is not None else {})}  # no backoff waits
    ctx.monkeypatch.setattr(judge.OpenAIChatBackend, "__init__", lambda self, **kw: real(self, **{**kw, **fast}))
    logs = ctx.root.parent / f"{ctx.root.name}.log"
    handler = __import__("logging").FileHandler(logs)
    root_logger = __import__("logging").getLogger()
    root_logger.addHandler(handler)
    try:
        with FakeOpenAI(script=script, default=default) as srv:
            msg = ctx.run(["mtbench-judge", "--answers", str(answers), "--questions", str(questions), "--output",
                           str(out), "--prompts", str(prompts), "--backend", "openai", "--judge-model", "j",
                           "--base-url", srv.url, "--api-key-env", "KEPT_FAULT_KEY", "--parallel", "1",
                           "--max-retries", str(retries), "--summary", str(summary)],
                          status=status, needles=needles, own=(out.parent, summary), absent=(KEY,), note=note)
            assert srv.requests and all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in srv.requests)
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    written = logs.read_text() + "".join(p.read_text() for p in ctx.root.rglob("*") if p.is_file())
    assert KEY not in written, "the key reached a log line or a written file"
    return msg


@case("judge 401 echoing the key (status line, header, body)", "exit 1, HTTP 401, key in no output/log")
def _judge_401(ctx: Ctx) -> None:
    _judge(ctx, [("echo_status", 401)], ("echo_status", 401), status=1, needles=("HTTP 401", "bad credentials"))


@case("judge 403 echoing the key", "exit 1, HTTP 403, key in no output/log")
def _judge_403(ctx: Ctx) -> None:
    _judge(ctx, [], ("echo_status", 403), status=1, needles=("HTTP 403",))


@case("judge 5xx echoing the key, retried then answered", "exit 0, key in no output/log")
def _judge_500(ctx: Ctx) -> None:
    _judge(ctx, [("echo_status", 500), ("echo_status", 503)], ("ok", "fine [[7]]"), status=0, retries=3,
           note="judged after 2 retries; key in no output or log")


@case("judge 2xx reply echoing the key", "exit 0, reply redacted, key in no output/log")
def _judge_200(ctx: Ctx) -> None:
    _judge(ctx, [("echo_auth",)], ("ok", "fine [[7]]"), status=0, note="echoed key redacted in the judgment")


@case("judge timeout mid-body echoing the key", "exit 0 (turn failed, score -1), key in no output/log")
def _judge_timeout(ctx: Ctx) -> None:
    _judge(ctx, [("echo_stall", 1.0), ("echo_stall", 1.0)], ("ok", "fine [[7]]"), status=0, retries=1,
           timeout=0.3, note="1 turn failed (score -1); key in no output or log")
    rows = [json.loads(x) for x in (ctx.root / "judgments" / "m.jsonl").read_text().splitlines()]
    assert sum(r["score"] == -1 for r in rows) == 1


# ---- configuration and sources ----------------------------------------------------------------------------------


@case("broken YAML overlay", "exit 1, names file:line")
def _broken_yaml(ctx: Ctx) -> None:
    overlay = ctx.root / "my.yaml"
    overlay.write_text("train:\n  steps: 10\n   lr: [1, 2\n")
    repo = Path(__file__).resolve().parent.parent
    ctx.run(["check-config", str(repo / "config.yaml"), str(overlay)], status=1, needles=(f"{overlay}:3",))


@case("overlay with a key the schema rejects", "exit 1, names the file and key")
def _bad_key(ctx: Ctx) -> None:
    overlay = ctx.root / "my.yaml"
    overlay.write_text("train:\n  steps: many\n")
    repo = Path(__file__).resolve().parent.parent
    ctx.run(["check-config", str(repo / "config.yaml"), str(overlay)], status=1,
            needles=(str(overlay), "train.steps"))


@case("hub id under HF_HUB_OFFLINE=1", "exit 1, one line naming repo and HF_HUB_OFFLINE")
def _offline_hub(ctx: Ctx) -> None:
    ctx.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    ctx.monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    out = ctx.root / "out"
    ctx.run(["convert", "OrionStarAI/Orion-14B-Base@main", str(out), "--norm", "paper"], status=1,
            needles=("OrionStarAI/Orion-14B-Base@main", "HF_HUB_OFFLINE"))


# ---- two runs, one results directory ----------------------------------------------------------------------------


@case("second snakemake on a results dir held by a live run", "exit 1, names the holder; -n still works")
def _two_runs(ctx: Ctx) -> None:
    from test_workflow import copy_workflow

    wd = ctx.root.parent / f"{ctx.root.name}-checkout"
    copy_workflow(wd)
    results = ctx.root / "results"
    (results / "keep").mkdir(parents=True)
    (results / "keep" / "h6.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kept.atomic import lock_directory; "
                               f"lock_directory({str(results)!r}, what='first run'); print('held', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(ctx.root)
        cmd = [SNAKEMAKE, "--cores", "1", "--configfile", "config/smoke.yaml", "--config", f"results={results}"]
        dry = subprocess.run(cmd + ["-n"], cwd=wd, capture_output=True, text=True, timeout=600)
        assert dry.returncode == 0, dry.stderr[-2000:]  # a dry run takes no lock
        proc = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=600)
        ctx.check(proc.returncode, proc.stderr, status=1, needles=(str(results), f"pid {holder.pid}"), own=(),
                  absent=(), before=before, error="another first run is writing")
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    """A run killed with -9 leaves the lock file but no lock: the next run takes it (and a live one is refused)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from kept.atomic import lock_directory; "
                               f"lock_directory({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(atomic.OutputError, match=f"pid {holder.pid}"):
        atomic.lock_directory(tmp_path)
    holder.kill()
    holder.wait()
    assert json.loads((tmp_path / atomic.LOCK).read_text())["pid"] == holder.pid  # the killed run's record stays
    atomic.lock_directory(tmp_path)
    try:
        assert json.loads((tmp_path / atomic.LOCK).read_text())["pid"] == os.getpid()
    finally:
        atomic.unlock_directory(tmp_path)


# ---- other source families (safetensors, tokenizer.json) ----------------------------------------------------------


def _edit_safetensors(src: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})


@case("olmo: a tensor missing", "exit 1, names the tensor")
def _olmo_missing(ctx: Ctx) -> None:
    src, name = ctx.src("olmo"), "model.layers.0.mlp.up_proj.weight"
    _edit_safetensors(src, lambda s: s.pop(name))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(repr(name), "lacks"))


@case("gpt_neox: fused QKV of the wrong shape", "exit 1, names the tensor and shapes")
def _neox_shape(ctx: Ctx) -> None:
    src, name = ctx.src("gpt_neox"), "gpt_neox.layers.0.attention.query_key_value.weight"
    _edit_safetensors(src, lambda s: s.__setitem__(name, s[name][:-4].contiguous()))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(repr(name), "(188, 64)"))


@case("gpt_neox: NaN in the fused QKV (row-selected for q/k/v), --norm paper", "exit 1, names the tensor")
def _neox_nan(ctx: Ctx) -> None:
    src, name = ctx.src("gpt_neox"), "gpt_neox.layers.0.attention.query_key_value.weight"
    _edit_safetensors(src, _poison(name, float("nan")))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="paper"), status=1, needles=(repr(name), "NaN or Inf"))


@case("phi: Inf in the LM-head bias (logit offset), --norm exact", "exit 1, names the tensor")
def _phi_head_bias(ctx: Ctx) -> None:
    src, name = ctx.src("phi"), "lm_head.bias"
    _edit_safetensors(src, _poison(name, float("inf")))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(repr(name), "NaN or Inf"))


@case("stablelm qk_layernorm=true, --norm exact", "exit 1, names qk_layernorm, says why")
def _stablelm_qkln(ctx: Ctx) -> None:
    src = ctx.src("stablelm-qkln")
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1,
            needles=("config.json", "qk_layernorm", "no stock Llama equivalent"))


@case("olmo --norm fit (weightless LayerNorm)", "exit 1, names the family, says why")
def _olmo_fit(ctx: Ctx) -> None:
    src = ctx.src("olmo")
    ctx.run(convert(ctx, src, ctx.root / "out", "--calibration", str(ctx.pristine["corpus"]), norm="fit"),
            status=1, needles=("'fit'", "olmo", "no weights"))


@case("learned-position model_type (gpt2)", "exit 1, names it and why stock Llama cannot hold its positions")
def _gpt2(ctx: Ctx) -> None:
    src = ctx.reconfigured("olmo", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1,
            needles=("'gpt2'", "learned absolute position embeddings", "cannot be converted"))


@case("unknown model_type (mamba)", "exit 1, names it and lists the supported families")
def _unknown(ctx: Ctx) -> None:
    src = ctx.reconfigured("olmo", model_type="mamba", architectures=["MambaForCausalLM"])
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1,
            needles=("'mamba'", "orion, olmo, stablelm, gpt_neox, phi, llama", "internlm2, baichuan"))


@case("remote-code-only config (auto_map, unknown model_type)", "exit 1, names it: remote code, no weights map")
def _remote_only(ctx: Ctx) -> None:
    src = ctx.reconfigured("qwen2", model_type="telechat", architectures=["TelechatForCausalLM"],
                           auto_map={"AutoConfig": "configuration_telechat.TelechatConfig",
                                     "AutoModelForCausalLM": "modeling_telechat.TelechatForCausalLM"})
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=("'telechat'", "remote code", "no weights map"))


@case("phi3: fused qkv_proj of the wrong size", "exit 1, names the tensor and shapes")
def _phi3_qkv(ctx: Ctx) -> None:
    src, name = ctx.src("phi3"), "model.layers.0.self_attn.qkv_proj.weight"
    _edit_safetensors(src, lambda s: s.__setitem__(name, s[name][:-16].contiguous()))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(repr(name), "(112, 64)", "(128, 64)"))


@case("internlm2: grouped wqkv of the wrong size", "exit 1, names the tensor and shapes")
def _internlm2_wqkv(ctx: Ctx) -> None:
    src, name = ctx.src("internlm2"), "model.layers.0.attention.wqkv.weight"
    _edit_safetensors(src, lambda s: s.__setitem__(name, s[name][:-16].contiguous()))
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(repr(name), "(112, 64)", "(128, 64)"))


@case("qwen2: a shard of the index missing", "exit 1, names the missing shard file")
def _qwen2_missing_shard(ctx: Ctx) -> None:
    src = ctx.src("qwen2-sharded")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (src / shard).unlink()
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=(shard,))


@case("persimmon qk_layernorm=true, --norm exact", "exit 1, names qk_layernorm, says why")
def _persimmon_exact(ctx: Ctx) -> None:
    src = ctx.src("persimmon")
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1,
            needles=("config.json", "qk_layernorm", "no stock Llama equivalent"))


@case("qwen2 --norm centered (an RMSNorm source)", "exit 1, names the family, says why")
def _qwen2_centered(ctx: Ctx) -> None:
    src = ctx.src("qwen2")
    ctx.run(convert(ctx, src, ctx.root / "out", norm="centered"), status=1,
            needles=("'centered'", "qwen2", "RMSNorm already"))


@case("nemotron --mlp-target runtimes (relu2)", "exit 1, names the activation, says why")
def _nemotron_runtimes(ctx: Ctx) -> None:
    src = ctx.src("nemotron")
    ctx.run(convert(ctx, src, ctx.root / "out", "--mlp-target", "runtimes", norm="exact"), status=1,
            needles=("'runtimes'", "'relu2'", "no SiLU form"))


@case("gemma with use_bidirectional_attention (an encoder)", "exit 1, names the key")
def _gemma_bidirectional(ctx: Ctx) -> None:
    src = ctx.reconfigured("gemma", use_bidirectional_attention=True)
    ctx.run(convert(ctx, src, ctx.root / "out"), status=1, needles=("use_bidirectional_attention", "causal"))


@case("phi: tokenizer.json missing", "exit 1, names the file")
def _phi_no_tokenizer(ctx: Ctx) -> None:
    src = ctx.src("phi")
    (src / "tokenizer.json").unlink()
    ctx.run(convert(ctx, src, ctx.root / "out", norm="exact"), status=1, needles=(str(src / "tokenizer.json"),))


# ---- the MHA -> GQA graft and the layer fit (issue 28) -------------------------------------------------------------


@case("--kv-heads 3 on 4 KV heads", "exit 1, names config.json, the count and the divisors; nothing written")
def _kv_not_dividing(ctx: Ctx) -> None:
    ctx.run(convert(ctx, ctx.src(), ctx.root / "out", "--kv-heads", "3", norm="exact"), status=1,
            needles=("config.json", "--kv-heads 3 does not divide the 4 KV heads", "[1, 2]"))


@case("--kv-heads 4 on a model already at 4 KV heads", "exit 1, says it changes nothing; nothing written")
def _kv_same(ctx: Ctx) -> None:
    ctx.run(convert(ctx, ctx.src(), ctx.root / "out", "--kv-heads", "4", norm="exact"), status=1,
            needles=("config.json", "already has 4 KV heads"))


@case("--kv-init fit on a calibration text too short", "exit 1, names the file, its tokens and the need")
def _calibration_short(ctx: Ctx) -> None:
    text = ctx.root / "calib.txt"
    text.write_text("Hello, world!\n")
    ctx.run(convert(ctx, ctx.src(), ctx.root / "out", "--kv-heads", "2", "--kv-init", "fit", "--calibration",
                    str(text), norm="exact"), status=1, needles=(str(text), "needs at least 65 (hidden_size + 1)"))


@case("a calibration fit that produces Inf (injected: the least-squares solve returns Inf)",
      "exit 1, names the layer and tensor; nothing written")
def _fit_inf(ctx: Ctx) -> None:
    from kept.convert import calibrate

    ctx.monkeypatch.setattr(calibrate._Normal, "solve", lambda self, w0t, ridge: torch.full_like(w0t, math.inf))
    ctx.run(convert(ctx, ctx.src(), ctx.root / "out", "--kv-heads", "2", "--kv-init", "fit", "--calibration",
                    str(ctx.pristine["corpus"]), norm="exact"), status=1,
            needles=("layer 0", "'model.layers.0.self_attn.o_proj.weight'", "NaN or Inf"))


@case("--layer-fit on an exact conversion", "exit 1, says there is nothing to fit")
def _layer_fit_exact(ctx: Ctx) -> None:
    ctx.run(convert(ctx, ctx.src("olmo"), ctx.root / "out", "--layer-fit", norm="exact"), status=1,
            needles=("--layer-fit", "nothing to fit"))


# ---- the runner ---------------------------------------------------------------------------------------------------


def test_suite_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_fault(name, pristine, tmp_path, monkeypatch, capsys):
    expected, fn = CASES[name]
    root = tmp_path / "tree"
    root.mkdir()
    fn(Ctx(root=root, pristine=pristine, monkeypatch=monkeypatch, capsys=capsys, name=name, expected=expected))
