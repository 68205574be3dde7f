"""Convert an Orion checkpoint into a stock ``LlamaForCausalLM`` checkpoint (NPM + OPM), streaming.

One source tensor is read at a time (:class:`kept.checkpoint.TensorReader`), transformed in float64 row blocks
and written straight into its safetensors shard, whose header is planned from the mapping before any weight is
read. Resident memory therefore stays near the largest single tensor, whatever the checkpoint's size. The whole
output -- weights, config, tokenizer, fidelity report -- is written into a temporary directory that is renamed
into place only when everything succeeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from kept.atomic import atomic_dir
from kept.checkpoint import ST_CODES, TensorReader
from kept.errors import CheckpointError, ConfigError
from kept.mapping import CENTRED_NORMS, NORMS, Plan, Step, plan_conversion
from kept.orion import DTYPES, read_orion_config
from kept.progress import Progress

log = logging.getLogger(__name__)

BLOCK_BYTES = 8 * 2**20  # float64 working block of the row-wise arithmetic
STAGING_BYTES = 16 * 2**20  # output bytes gathered per write call
INDEX = "model.safetensors.index.json"
GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more with mmap (glibc ``mallopt(M_MMAP_THRESHOLD)``).

    glibc raises its mmap threshold dynamically (up to 32 MB) as large blocks are freed, after which blocks of a
    few MB come from the heap, fragment it, and keep resident memory growing layer after layer of a streaming
    pass. A fixed threshold returns every freed block to the system at once, so resident memory tracks what is
    live. Process-wide and harmless elsewhere; a no-op (False) off glibc.
    """
    import ctypes
    import ctypes.util

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


# ---- tensor arithmetic (float64, row blocks) --------------------------------------------------------------
#
# Memory discipline: every source tensor is read into one reusable buffer sized for the largest tensor, and the
# float64 arithmetic runs on row blocks in one reusable float64 work buffer, cast into one reusable staging
# buffer that is written out when full. Nothing else of a tensor's size is allocated, so the resident memory
# stays near the largest tensor plus the two buffers, without allocator fragmentation.


class _Source:
    """Tensor access for the conversion: a shared read buffer, a one-tensor cache (a fold step reuses the
    weight its copy step just read), finiteness checks, and the block work buffers."""

    def __init__(self, reader: TensorReader, where: Path, names: list[str]) -> None:
        self.reader = reader
        self.where = where
        nbytes = max((reader.info(n).nbytes for n in names), default=0)
        self._buf = torch.empty(nbytes, dtype=torch.uint8)
        self._small: dict[str, torch.Tensor] = {}  # 1-D tensors (norm weights/biases) read on the side
        self._name: str | None = None
        self._tensor: torch.Tensor | None = None
        self._work = torch.empty(BLOCK_BYTES // 8, dtype=torch.float64)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, checked finite; valid until the next call for a different large tensor."""
        if self._name == name:
            assert self._tensor is not None
            return self._tensor
        if name in self._small:
            return self._small[name]
        info = self.reader.info(name)
        if len(info.shape) <= 1:
            tensor = self.reader.get(name)
            self._check(tensor, name)
            self._small = {name: tensor}
            return tensor
        self._name, self._tensor = None, None
        tensor = self.reader.get(name, out=self._buf)
        self._check(tensor, name)
        self._name, self._tensor = name, tensor
        return tensor

    def _check(self, t: torch.Tensor, name: str) -> None:
        if not t.is_floating_point():
            return
        flat = t.reshape(-1)
        step = 1 << 17  # temporaries below the mmap threshold (bound_heap), so they are reused, not faulted in
        for i in range(0, flat.numel(), step):
            # max |x| is NaN if any element is NaN (torch's max propagates NaN) and Inf if any is infinite: one
            # vectorised pass, several times faster than torch.isfinite(...).all() on bf16.
            if not bool(torch.isfinite(flat[i : i + step].abs().max())):
                raise CheckpointError(f"{self.where}: tensor {name!r} contains NaN or Inf")

    def rows(self, t: torch.Tensor) -> int:
        row = t[0].numel() if t.dim() > 1 else 1
        return max(1, BLOCK_BYTES // (8 * max(1, row)))

    def blocks(self, t: torch.Tensor) -> Iterator[torch.Tensor]:
        """Row blocks of ``t`` copied into the float64 work buffer (each valid until the next)."""
        flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
        step = self.rows(t)
        cols = flat.shape[1]
        if step * cols > self._work.numel():  # a single row larger than the block
            self._work = torch.empty(step * cols, dtype=torch.float64)
        for r in range(0, flat.shape[0], step):
            src = flat[r : r + step]
            work = self._work[: src.numel()].view(src.shape)
            work.copy_(src)
            yield work


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
        w = src.get(step.sources[0])  # the weight its copy step just read (cached)
        beta = src.get(step.sources[1]).double()
        bias = torch.empty(w.shape[0], dtype=torch.float64)
        r = 0
        for blk in src.blocks(w):
            torch.mv(blk, beta, out=bias[r : r + blk.shape[0]])
            r += blk.shape[0]
        yield bias
        return
    t = src.get(step.sources[0])
    if op in ("copy", "gain"):
        if t.dtype == out_dtype or t.dim() == 0:
            yield t  # NPM: the bytes as read
        else:
            rows = src.rows(t)
            for r in range(0, t.shape[0], rows):
                yield t[r : r + rows]  # cast (one rounding) by the writer
    elif op == "center_rows":  # rows written into the stream: E - E.mean(dim=1)
        for blk in src.blocks(t):
            blk -= blk.mean(dim=1, keepdim=True)
            yield blk
    elif op == "center_out":  # [out, in] projection into the stream: W - W.mean(dim=0)
        col = torch.zeros(t.shape[1:], dtype=torch.float64)
        ones = torch.ones(src.rows(t), dtype=torch.float64)
        for blk in src.blocks(t):
            col += ones[: blk.shape[0]] @ blk  # column sums (a BLAS pass; sum(dim=0) is strided and slower)
        col /= t.shape[0]
        for blk in src.blocks(t):
            blk -= col
            yield blk
    else:  # pragma: no cover - plan_conversion only emits the ops above
        raise AssertionError(f"unknown op {op!r}")


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


class _StagedWriter:
    """Writes tensor bytes to a file. Blocks are cast to the output dtype straight into one staging buffer
    (one pass, no separate cast buffer) and written out in large ``write`` calls; a whole tensor that is already
    in the output dtype is written directly from where it was read."""

    def __init__(self, fh: BinaryIO, staging: torch.Tensor, dtype: torch.dtype) -> None:
        self.fh = fh
        self.staging = staging  # 1-D uint8
        self.dtype = dtype
        self.used = 0

    def write(self, block: torch.Tensor) -> int:
        n = block.numel() * self.dtype.itemsize
        if block.dtype == self.dtype and n > self.staging.numel() // 2:
            self.flush()
            self.fh.write(memoryview(block.contiguous().reshape(-1).view(torch.uint8).numpy()))
            return n
        if n > self.staging.numel():
            self.staging = torch.empty(n, dtype=torch.uint8)
        if self.used + n > self.staging.numel():
            self.flush()
        self.staging[self.used : self.used + n].view(self.dtype).view(block.shape).copy_(block)  # cast
        self.used += n
        return n

    def flush(self) -> None:
        if self.used:
            self.fh.write(memoryview(self.staging[: self.used].numpy()))
            self.used = 0


def write_weights(
    *,
    reader: TensorReader | _Source,
    plan: Plan,
    out_dir: Path,
    out_dtype: torch.dtype,
    max_shard_size: int,
    gains: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Stream every target tensor of ``plan`` into safetensors shards + index under ``out_dir``."""
    if isinstance(reader, _Source):
        src = reader
    else:
        src = _Source(reader, reader.directory, [n for step in plan.steps for n in step.sources])
    shards = plan_shards(plan.steps, itemsize=out_dtype.itemsize, max_bytes=max_shard_size)
    staging = torch.empty(STAGING_BYTES, dtype=torch.uint8)
    weight_map: dict[str, str] = {}
    progress = Progress(sum(s.nbytes(out_dtype.itemsize) for s in shards), desc="convert: weights", unit="B")
    for shard in shards:
        with open(out_dir / shard.name, "wb") as fh:
            fh.write(_header(shard, out_dtype))
            writer = _StagedWriter(fh, staging, out_dtype)
            for step in shard.steps:
                want = math.prod(step.shape) * out_dtype.itemsize
                got = sum(writer.write(blk) for blk in _produce(step, src, out_dtype, gains or {}))
                if got != want:  # pragma: no cover - guards the header/data agreement
                    raise AssertionError(f"{step.target}: wrote {got} bytes, header says {want}")
                weight_map[step.target] = shard.name
                progress.update(got)
            writer.flush()
        log.info("wrote %s (%d tensors)", shard.name, len(shard.steps))
    total = sum(s.nbytes(out_dtype.itemsize) for s in shards)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


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


def final_norm_offset(reader: TensorReader | _Source) -> torch.Tensor:
    """``lm_head @ beta_f`` in float64: the per-vocab logit offset the final LayerNorm's bias adds."""
    src = reader if isinstance(reader, _Source) else _Source(reader, reader.directory, ["lm_head.weight"])
    beta = src.get("model.norm.bias").double()
    head = src.get("lm_head.weight")
    offset = torch.empty(head.shape[0], dtype=torch.float64)
    r = 0
    for blk in src.blocks(head):
        torch.mv(blk, beta, out=offset[r : r + blk.shape[0]])
        r += blk.shape[0]
    if not bool(torch.isfinite(offset).all()):
        raise CheckpointError(f"{src.where}: lm_head.weight or model.norm.bias contains NaN or Inf")
    return offset


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
) -> dict[str, Any]:
    """Convert the Orion checkpoint ``source`` into a stock Llama checkpoint at ``output``; return the fidelity
    report (also written as fidelity.json / fidelity.md, with conversion.json, next to the weights).

    ``norm``: ``paper`` | ``centered`` | ``exact`` | ``fit`` (see :mod:`kept.mapping`). ``dtype``: output dtype,
    default the source's ``torch_dtype``. ``calibration``: a packed corpus directory; required for ``fit``
    (gains fitted on its first ``fit_tokens`` tokens) and used for the fidelity report (its last
    ``fidelity_tokens`` tokens; without it a built-in multilingual sample). ``fidelity_tokens=0`` skips the
    metrics. ``chat``: write the Llama-3 chat template (default: when the source's tokenizer_config names a
    chat format). Raises a :class:`~kept.errors.KeptError` naming the file, tensor or key on bad input, and
    then leaves nothing at ``output``.
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
    if output.resolve() == source.resolve():
        raise ConfigError(f"{output}: output must differ from the source directory")

    cfg = read_orion_config(source)
    tok_model = check_tokenizer(source, cfg)
    tok_warnings = runtime_warnings(tok_model)
    for w in tok_warnings:
        log.warning("tokenizer: %s (%s). %s What to do: %s", w["property"], w["detail"], w["effect"], w["advice"])
    with TensorReader(source) as reader:
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

        src = _Source(reader, source, [n for step in plan.steps for n in step.sources])
        offset = final_norm_offset(src)
        chat = _is_chat(source) if chat is None else chat
        with atomic_dir(output) as tmp:
            write_weights(reader=src, plan=plan, out_dir=tmp, out_dtype=out_dtype,
                          max_shard_size=max_bytes, gains=gains)
            del src  # release the read buffer before the fidelity pass
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
                    progress=_layer_progress(cfg["num_hidden_layers"]),
                ))
            (tmp / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
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
            (tmp / "conversion.json").write_text(json.dumps(conversion, indent=2) + "\n")
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kept.source import resolve_source

    source = resolve_source(args.source, cache_dir=Path(args.output).parent / ".sources")
    report = convert_checkpoint(
        source=source, output=args.output, norm=args.norm, dtype=args.dtype, max_shard_size=args.max_shard_size,
        calibration=args.calibration, fidelity_tokens=args.fidelity_tokens, fit_tokens=args.fit_tokens,
        chat=args.chat, device=args.device,
    )
    summary = {k: report.get(k) for k in ("norm", "n_tokens", "kl_mean", "top1_agreement", "max_abs_dlogit",
                                          "final_norm_logit_offset_norm")}
    print(json.dumps(summary, indent=2))
    return 0
