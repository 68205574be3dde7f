"""How close a converted student is to its source teacher before any training.

Both models run layer by layer from disk (:class:`kept.convert.stream.StreamingModel`, on the layer loop shared
with the calibration pass, :func:`kept.convert.stream.walk`): one decoder layer's weights are in memory at a time,
in the classes of each model's own family (the source's, e.g. ``GPTNeoXLayer``; ``LlamaDecoderLayer`` for the
student), so measuring a 14B conversion needs memory for one layer, the hidden states and an LM head, not for two
models.

Metrics on a calibration batch (:func:`fidelity_report`): per-token KL(teacher || student) (mean, max), top-1
agreement, max |logit difference|, the relative residual-stream error at each of the L+1 slots (embedding output
and every layer's output; centred students are compared with the centred teacher stream, since centring is
exact there), and the norm of the logit offset ``lm_head @ beta_f`` (+ an LM-head bias) that stock Llama cannot hold.
For ``exact`` the logit metrics are also given with that offset added back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kept.convert.stream import Stream, StreamingModel, walk
from kept.errors import CheckpointError, ConfigError

HEAD_BLOCK_BYTES = 16 * 2**20  # LM-head rows (float32) read from disk at once, per model
LOGIT_BLOCK_BYTES = 4 * 2**20  # float64 logits of one (token chunk x vocab block) tile

# Used for the fidelity report when no calibration corpus is given (ko/zh/ja/en/code).
BUILTIN_SAMPLE = (
    "서울은 대한민국의 수도이며, 한강이 도시를 가로질러 흐른다. 오늘은 날씨가 맑아서 공원에 사람이 많다.\n"
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。我们明天一起去图书馆看书吧。\n"
    "東京は日本の首都で、世界有数の大都市です。今日は雨が降っているので、家で本を読みます。\n"
    "The quick brown fox jumps over the lazy dog. Language models predict the next token from context.\n"
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
)


# ---- calibration text -----------------------------------------------------------------------------------


def calibration_tokens(
    corpus: str | Path, *, n_tokens: int, from_end: bool = False, max_len: int = 2048
) -> torch.Tensor:
    """``[B, T]`` token ids from a packed corpus directory (manifest.json + int32 shards).

    Whole sequences are taken from the start of the corpus (``from_end``: from its end, so a fitting batch and a
    fidelity batch do not overlap), cut to ``max_len`` tokens, until ``n_tokens`` are collected.
    """
    corpus = Path(corpus)
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: calibration corpus has no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
        shards = [corpus / s for s in manifest["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest_path}: not a packed-corpus manifest ({exc})") from exc
    if from_end:
        shards = shards[::-1]
    rows: list[np.ndarray] = []
    have = 0
    for shard in shards:
        if not shard.is_file():
            raise ConfigError(f"{manifest_path}: shard {shard} is missing")
        arr = np.load(shard, mmap_mode="r")
        if arr.ndim != 2:
            raise ConfigError(f"{shard}: expected a 2-D token array, found shape {arr.shape}")
        order = range(arr.shape[0] - 1, -1, -1) if from_end else range(arr.shape[0])
        for r in order:
            row = np.asarray(arr[r, :max_len], dtype=np.int64)
            rows.append(row)
            have += row.size
            if have >= n_tokens:
                break
        if have >= n_tokens:
            break
    if not rows:
        raise ConfigError(f"{manifest_path}: calibration corpus holds no sequences")
    length = min(r.size for r in rows)
    return torch.from_numpy(np.stack([r[:length] for r in rows]))


def builtin_tokens(tokenizer: str | Path, *, bos: int | None = None) -> torch.Tensor:
    """``[1, T]`` ids of :data:`BUILTIN_SAMPLE` under the source's tokenizer (SentencePiece ``tokenizer.model``, with
    its BOS; or a tokenizers ``tokenizer.json``, after ``bos`` if given)."""
    if Path(tokenizer).suffix == ".json":
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tokenizer)).encode(BUILTIN_SAMPLE, add_special_tokens=False).ids
        return torch.tensor([([bos] if bos is not None else []) + ids], dtype=torch.long)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    ids = ([sp.bos_id()] if sp.bos_id() >= 0 else []) + sp.encode(BUILTIN_SAMPLE)
    return torch.tensor([ids], dtype=torch.long)


def split_batches(ids: torch.Tensor, *, tokens_per_batch: int = 8192) -> list[torch.Tensor]:
    """Rows of ``ids`` grouped into batches of about ``tokens_per_batch`` tokens."""
    per = max(1, tokens_per_batch // max(1, ids.shape[1]))
    return [ids[i : i + per] for i in range(0, ids.shape[0], per)]


# ---- fidelity -------------------------------------------------------------------------------------------


class _OnlineLogitStats:
    """KL(teacher || student), top-1 agreement and max |dlogit| per token for one teacher and ``k`` student
    variants (e.g. with and without an offset), accumulated over vocabulary blocks (online log-sum-exp), so no
    full ``(tokens, V)`` logit matrix is ever held; the teacher's side is computed once for all variants."""

    def __init__(self, n: int, k: int = 1, device: str | torch.device = "cpu") -> None:
        f64: dict[str, Any] = dict(dtype=torch.float64, device=device)
        self.m_t = torch.full((n,), -math.inf, **f64)  # running max of teacher logits
        self.arg_t = torch.zeros(n, dtype=torch.long, device=device)  # its vocabulary id
        self.s_t = torch.zeros(n, **f64)  # sum exp(z_t - m_t)
        self.a = [torch.zeros(n, **f64) for _ in range(k)]  # sum exp(z_t - m_t) * (z_t - z_s)
        self.m_s = [torch.full((n,), -math.inf, **f64) for _ in range(k)]
        self.arg_s = [torch.zeros(n, dtype=torch.long, device=device) for _ in range(k)]
        self.s_s = [torch.zeros(n, **f64) for _ in range(k)]
        self.dmax = [0.0] * k

    def update(self, rows: slice, v0: int, zt: torch.Tensor, zs: list[torch.Tensor]) -> None:
        """Logit tiles (n, vb), float64, for tokens ``rows`` and vocabulary ids ``v0:v0+vb``: the teacher's and
        each student variant's."""
        val, idx = zt.max(-1)
        m_t = torch.maximum(self.m_t[rows], val)
        self.arg_t[rows] = torch.where(val > self.m_t[rows], idx + v0, self.arg_t[rows])
        scale = torch.exp(self.m_t[rows] - m_t)
        e = torch.exp(zt - m_t[:, None])  # (n, vb)
        self.s_t[rows] = self.s_t[rows] * scale + e.sum(-1)
        self.m_t[rows] = m_t
        for i, z in enumerate(zs):
            d = zt - z
            self.a[i][rows] = self.a[i][rows] * scale + (e * d).sum(-1)
            self.dmax[i] = max(self.dmax[i], float(d.abs_().max()))
            val, idx = z.max(-1)
            m_s = torch.maximum(self.m_s[i][rows], val)
            self.arg_s[i][rows] = torch.where(val > self.m_s[i][rows], idx + v0, self.arg_s[i][rows])
            d = torch.sub(z, m_s[:, None], out=d).exp_()
            self.s_s[i][rows] = self.s_s[i][rows] * torch.exp(self.m_s[i][rows] - m_s) + d.sum(-1)
            self.m_s[i][rows] = m_s

    def result(self, i: int = 0, *, sequences: int = 1) -> dict[str, Any]:
        """Variant ``i``'s metrics over all tokens, plus KL and top-1 agreement per sequence (tokens in
        sequence-major order, ``sequences`` equal rows) for standard errors over sequences."""
        lse_t = self.m_t + torch.log(self.s_t)
        lse_s = self.m_s[i] + torch.log(self.s_s[i])
        kl = (self.a[i] / self.s_t - lse_t + lse_s).clamp_min(0.0)  # sum p_t (z_t - z_s) - lse_t + lse_s
        agree = (self.arg_t == self.arg_s[i]).double()
        return {
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "top1_agreement": float(agree.mean()),
            "max_abs_dlogit": self.dmax[i],
            "kl_per_sequence": kl.view(sequences, -1).mean(1).tolist(),
            "top1_per_sequence": agree.view(sequences, -1).mean(1).tolist(),
        }


@torch.no_grad()
def fidelity_report(
    *,
    teacher: str | Path,
    student: str | Path,
    centred: bool,
    ids: torch.Tensor,
    logit_offset: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
    same_head: bool = False,
) -> dict[str, Any]:
    """Compare teacher and student on token ids ``[B, T]`` (see the module docstring for the metrics).

    ``logit_offset`` (``lm_head @ beta_f``, shape ``[V]``) is added to the student's logits for the extra
    ``offset_corrected`` metrics (used for ``exact``). ``same_head``: the student's ``lm_head.weight`` holds the
    teacher's bytes (the conversion copied it), so it is read once.
    """
    t_model = StreamingModel(teacher, device=device)
    s_model = StreamingModel(student, device=device)
    try:
        batches = split_batches(ids)
        t_stream = Stream(t_model, batches, who=f"teacher {teacher}")
        s_stream = Stream(s_model, batches, who="converted student")

        def slot_error() -> float:
            pairs = list(zip(s_stream.hidden, t_stream.hidden))
            num = sum(float(torch.linalg.vector_norm((s - (t - t.mean(-1, keepdim=True) if centred else t)).double()) ** 2)
                      for s, t in pairs)
            den = sum(float(torch.linalg.vector_norm((t - t.mean(-1, keepdim=True) if centred else t).double()) ** 2)
                      for _, t in pairs)
            return math.sqrt(num / max(den, 1e-300))

        layer_err = [slot_error()]

        def after(i: int) -> None:
            layer_err.append(slot_error())
            if progress:
                progress(f"fidelity: layer {i + 1}/{t_model.num_layers} rel err {layer_err[-1]:.3e}")

        walk(t_stream, s_stream, after=after)
        ht, hs = t_stream.hidden, s_stream.hidden
        nt = torch.cat([t_model.final_norm(h).reshape(-1, h.shape[-1]) for h in ht])  # (N, d)
        ns = torch.cat([s_model.final_norm(h).reshape(-1, h.shape[-1]) for h in hs])
        del ht, hs
        n_tok, d = nt.shape
        offset = logit_offset.to(device=device, dtype=torch.float64) if logit_offset is not None else None
        stats = _OnlineLogitStats(n_tok, 1 if offset is None else 2, device)
        vocab = t_model.vocab_size()
        vb = max(1, HEAD_BLOCK_BYTES // (4 * d))
        for v0 in range(0, vocab, vb):
            w_t = t_model.head_rows(v0, v0 + vb)  # (vb, d)
            w_s = w_t if same_head else s_model.head_rows(v0, v0 + vb)
            b_t = t_model.head_bias_rows(v0, v0 + w_t.shape[0])  # (vb,) or None
            chunk = max(1, LOGIT_BLOCK_BYTES // (8 * w_t.shape[0]))
            for c0 in range(0, n_tok, chunk):
                rows = slice(c0, min(n_tok, c0 + chunk))
                zt = (nt[rows] @ w_t.T).double()  # (n, vb)
                if b_t is not None:
                    zt += b_t
                zt = t_model.logits(zt)
                zs = s_model.logits((ns[rows] @ w_s.T).double())
                variants = [zs] if offset is None else [zs, zs + offset[v0 : v0 + w_t.shape[0]]]
                stats.update(rows, v0, zt, variants)
            del w_t, w_s
        report: dict[str, Any] = {"n_tokens": int(ids.numel()), **stats.result(0, sequences=ids.shape[0]),
                                  "layer_rel_err": layer_err}
        if offset is not None:
            report["offset_corrected"] = {k: v for k, v in stats.result(1).items() if not k.endswith("_per_sequence")}
        bad = [k for k, v in report.items() if isinstance(v, float) and not math.isfinite(v)]
        bad += [f"layer_rel_err[{i}]" for i, v in enumerate(layer_err) if not math.isfinite(v)]
        bad += [f"offset_corrected.{k}" for k, v in report.get("offset_corrected", {}).items() if not math.isfinite(v)]
        if bad:
            raise CheckpointError(f"fidelity report of {teacher}: metric {bad[0]} is not finite: the logits of "
                                  f"{t_model.head_name} after {t_model.norm_w or 'the final norm'} overflow in float32")
        return report
    finally:
        t_model.close()
        s_model.close()


def fidelity_markdown(report: dict[str, Any]) -> str:
    """fidelity.md: the metrics, the per-layer errors, the mapping table and the dropped tensors."""
    lines = [
        f"# Conversion fidelity: norm mapping `{report['norm']}`",
        "",
        f"Source: `{report.get('source', '?')}`; calibration: {report.get('calibration', '?')}; "
        f"{report['n_tokens']} tokens; output dtype {report.get('dtype', '?')}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("kl_mean", "kl_max", "top1_agreement", "max_abs_dlogit", "final_norm_logit_offset_norm"):
        value = report.get(key)
        lines.append(f"| {key} | {value:.6g} |" if isinstance(value, (int, float)) else f"| {key} | {value} |")
    if "offset_corrected" in report:
        for key, value in report["offset_corrected"].items():
            lines.append(f"| {key} (final-norm offset added back) | {value:.6g} |")
    lines += ["", "Relative residual-stream error per slot (0 = embedding output"
              + (", teacher stream centred" if report.get("centered") else "") + "):", "",
              "| slot | rel. error |", "|---|---|"]
    lines += [f"| {i} | {e:.4e} |" for i, e in enumerate(report.get("layer_rel_err", []))]
    lines += ["", "## Mapping", "", "| source | target | rule | tensors |", "|---|---|---|---|"]
    lines += [f"| `{m['source']}` | `{m['target']}` | {m['rule']} | {m['count']} |" for m in report["mapping"]]
    lines += ["", "## Dropped", "", "| source | reason | tensors |", "|---|---|---|"]
    lines += [f"| `{d['source']}` | {d['reason']} | {d['count']} |" for d in report["dropped"]]
    return "\n".join(lines) + "\n"


def check_ids(ids: torch.Tensor, vocab_size: int, where: str) -> None:
    """Calibration ids must index the embedding."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise CheckpointError(f"{where}: token ids span [{int(ids.min())}, {int(ids.max())}], outside the vocabulary of {vocab_size}")
