"""The arithmetic of each :class:`~kept.convert.plan.Step` operation, block by block from the mapped source.

Float64 for float32 outputs, float32 for bfloat16/float16 outputs (:func:`arith_dtype`); every block is valid until
the next one is asked for, and the writer casts it to the output dtype.
"""

from __future__ import annotations

from typing import Iterator

import torch

from kept.convert.plan import Step
from kept.convert.writer import BLOCK_BYTES, STAGING_BYTES, _Source


def arith_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the mapping arithmetic (centring, folding) for an output dtype: float64 for float32/float64
    outputs, float32 for bfloat16/float16 outputs (16/13 more mantissa bits than the output). Each output element
    is then a neighbour of the exact value and equals the float64 path's correctly rounded one except within a
    hair of a rounding boundary (tests/test_convert.py; 8e-6 of the elements of the 2.2 GB bench checkpoint).
    The final-norm logit offset is always float64."""
    return torch.float64 if out_dtype.itemsize >= 4 else torch.float32


def kernel_span(step: Step, src: _Source, out_dtype: torch.dtype) -> tuple[int, int] | None:
    """The byte span (offset in its file, length) that the target is as stored -- an NPM copy in the same dtype of
    one dense run in a file: a whole tensor, or a contiguous range of its rows (q of a fused ``[q | k | v]``, the
    gate half of ``gate_up_proj``) -- else None (the target is computed)."""
    rows = step.rows
    if step.op not in ("copy", "gain") or step.scale != 1.0 or step.shift or step.fold or step.row_scale:
        return None
    ti = src.reader.info(step.sources[0])
    if ti.dtype != out_dtype or not ti.dense or ti.nbytes == 0:
        return None
    if rows is None:
        return ti.data_offset, ti.nbytes
    if len(ti.shape) < 2 or rows != tuple(range(rows[0], rows[0] + len(rows))):
        return None
    row = ti.nbytes // ti.shape[0]
    return ti.data_offset + rows[0] * row, len(rows) * row


def _vector(src: _Source, name: str, rows: tuple[int, ...] | None) -> torch.Tensor:
    """A 1-D source tensor (its selected rows) in the arithmetic dtype, checked."""
    v = src.small(name).to(src.arith)
    return v[list(rows)] if rows is not None else v


def _fold(step: Step, src: _Source, out_dtype: torch.dtype) -> torch.Tensor:
    """``b = W[rows] @ beta (+ b_src[rows])``, scaled."""
    w_name, b_name = step.sources[:2]
    stored = src.reader.info(w_name).dtype
    beta = src.small(b_name)
    if (step.rows is None and len(step.sources) == 2 and step.scale == 1.0 and src.arith == torch.float32
            and stored == beta.dtype == out_dtype == torch.bfloat16):
        # bf16 x bf16 matrix-vector products accumulate in float32 and round once to bf16 (the float32 path's
        # result, without converting W): straight from the mapped windows
        bias = torch.cat([torch.mv(win, beta) for win in src.windows(w_name, check=False)])
    else:
        beta = beta.to(src.arith)
        bias = torch.empty(step.shape[0], dtype=src.arith)
        r = 0
        for blk in src.blocks(w_name, rows=step.rows):
            torch.mv(blk, beta, out=bias[r : r + blk.shape[0]])
            r += blk.shape[0]
    src.verify(w_name, bias, done=step.rows is None)
    if len(step.sources) == 3:
        bias += _vector(src, step.sources[2], step.rows)
    if step.scale != 1.0:
        bias *= step.scale
    return bias


def _fold_vector(step: Step, fitted: dict[str, torch.Tensor], arith: torch.dtype) -> torch.Tensor | None:
    """The per-row factor of ``step`` for its target rows: its fitted scale times its fixed row scale (None:
    neither)."""
    v = None
    if step.fold is not None:
        v = fitted[step.fold].to(arith)
        v = v[list(step.fold_rows)] if step.fold_rows is not None else v
    if step.row_scale is not None:
        rows = torch.tensor(step.row_scale, dtype=arith)[: step.shape[0]]
        v = rows if v is None else v * rows
    return v


def produce(step: Step, src: _Source, out_dtype: torch.dtype, fitted: dict[str, torch.Tensor]) -> Iterator[torch.Tensor]:
    """Blocks of the target tensor in row-major order (any dtype: the writer casts them to ``out_dtype``).
    ``fitted``: the values fitted on calibration text (gains, and the per-row scales of folds), by key."""
    op = step.op
    if op in ("zeros", "ones", "fill"):
        value = {"zeros": 0.0, "ones": 1.0, "fill": step.scale}[op]
        row = max(1, int(torch.Size(step.shape[1:]).numel()))
        rows = max(1, STAGING_BYTES // (out_dtype.itemsize * row))
        block = torch.full((min(rows, step.shape[0]), *step.shape[1:]), value, dtype=out_dtype)  # reused
        for r in range(0, step.shape[0], rows):
            yield block[: min(rows, step.shape[0] - r)]
        return
    if op in ("fit_gain", "given"):  # computed elsewhere: the fitted values, a calibration pass's refitted tensors
        yield fitted[step.target]
        return
    fold = _fold_vector(step, fitted, src.arith)
    if op == "fold":
        bias = _fold(step, src, out_dtype)
        yield bias * fold if fold is not None else bias
        return
    name = step.sources[0]
    if op == "center_vec":  # a bias added to the stream: b - mean(b)
        v = _vector(src, name, None)
        v = (v - v.mean()) * step.scale
        yield v * fold if fold is not None else v
        return
    if step.verbatim:  # cast (one rounding) by the writer, if the dtype changes
        for win in src.windows(name):
            row = win[0].numel() if win.dim() > 1 else 1
            rows = max(1, STAGING_BYTES // (2 * out_dtype.itemsize * max(1, row)))
            for r in range(0, max(1, win.shape[0] if win.dim() else 1), rows):
                yield win[r : r + rows] if win.dim() else win
    elif op in ("copy", "gain"):  # rows selected (fused QKV, RoPE permutation), scaled, shifted, folded
        if src.reader.info(name).shape.__len__() < 2:
            v = _vector(src, name, step.rows) * step.scale + step.shift
            yield v * fold if fold is not None else v
            return
        if step.scale == 1.0 and fold is None:  # a row selection: gathered in the stored dtype, no arithmetic
            yield from src.blocks(name, src.reader.info(name).dtype, rows=step.rows)
            return
        yield from _scaled(src.blocks(name, rows=step.rows), step.scale, fold)
    elif op == "unit_rows":  # rows divided by their L2 norm (a normalised head), scaled
        for blk in src.blocks(name):
            norm = torch.linalg.vector_norm(blk, dim=1, keepdim=True)
            src.verify(name, norm, done=False)
            blk /= norm.clamp_min(1e-12)
            if step.scale != 1.0:
                blk *= step.scale
            yield blk
        src.checked.add(name)  # every row's norm was verified
    elif op == "center_rows":  # rows written into the stream: (E - E.mean(dim=1)) * scale
        for blk in src.blocks(name):
            mean = blk.mean(dim=1, keepdim=True)
            src.verify(name, mean, done=False)
            blk -= mean
            if step.scale != 1.0:
                blk *= step.scale
            yield blk
        src.checked.add(name)  # every row's mean was verified
    elif op == "center_out":  # [out, in] projection into the stream: (W - W.mean(dim=0)) * scale
        shape = src.reader.info(name).shape
        col = torch.zeros(shape[1:], dtype=src.arith)
        ones = torch.ones(BLOCK_BYTES // (src.arith.itemsize * max(1, shape[1])) + 1, dtype=src.arith)
        for blk in src.blocks(name):
            col.addmv_(blk.T, ones[: blk.shape[0]])  # column sums, a BLAS pass
        col /= shape[0]
        src.verify(name, col)
        yield from _scaled((blk.sub_(col) for blk in src.blocks(name)), step.scale, fold)
    else:  # pragma: no cover - plan_conversion only emits the ops above
        raise AssertionError(f"unknown op {op!r}")


def _scaled(blocks: Iterator[torch.Tensor], scale: float, rows: torch.Tensor | None) -> Iterator[torch.Tensor]:
    """Row blocks times ``scale`` and, row by row, times ``rows`` (a per-row factor over the whole tensor)."""
    r = 0
    for blk in blocks:
        if scale != 1.0:
            blk *= scale
        if rows is not None:
            blk *= rows[r : r + blk.shape[0], None]
        r += blk.shape[0]
        yield blk


def logit_offset(src: _Source, *, head: str, beta: str | None, bias: str | None, scale: float = 1.0) -> torch.Tensor:
    """``scale * (head @ beta_f + head bias)`` in float64: the per-vocab logit offset stock Llama cannot hold (the
    final LayerNorm's beta seen through the LM head, and an LM-head bias)."""
    offset = torch.zeros(src.reader.info(head).shape[0], dtype=torch.float64)
    if beta is not None:
        b = src.small(beta).double()
        r = 0
        for blk in src.blocks(head, torch.float64):
            torch.mv(blk, b, out=offset[r : r + blk.shape[0]])
            r += blk.shape[0]
        src.verify(head, offset)  # also the finiteness check of the head
    if bias is not None:
        offset += src.small(bias).double()
    return offset * scale if scale != 1.0 else offset
