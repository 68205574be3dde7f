"""GPU: XKD-z step throughput and model FLOPs utilisation in bf16 on a >= 1B-parameter model.

Pipeline, all through the product's own code: a random Orion-format teacher (vocab 84608 like Orion-14B) is
written with ``kept.orion.save_orion_checkpoint``, converted with ``kept.convert.convert_checkpoint`` (norm
``paper``), and trained with ``kept.train.train`` for a few steps of XKD-z, then of UT on the same model and data
(the baseline: same student, no teacher). Tokens/s is the median of the logged per-step rates after warm-up;
MFU counts 6·N FLOPs per token for the student (forward + backward) plus 2·N for the teacher's forward, plus the
attention score terms, against the GPU's dense bf16 peak.

Skipped (no rows) without CUDA.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Dense bf16 peaks (TFLOP/s, no sparsity) by device-name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def _peak(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def _random_corpus(out: Path, *, vocab: int, length: int, rows: int, seed: int) -> None:
    from kept.corpus import pack

    rng = np.random.default_rng(seed)

    def docs():
        while True:
            yield "xx", rng.integers(3, vocab, size=int(rng.integers(length // 2, 2 * length))).tolist()

    pack(documents={"xx": docs()}, budgets={"xx": rows * length}, output=out, max_length=length, eos_id=2, seed=seed)


def _median_rate(log: Path, skip: int) -> float:
    rates = [json.loads(line)["tokens_per_s"] for line in log.read_text().splitlines() if line.strip()]
    return statistics.median(rates[skip:])


TITLE = "GPU: XKD-z step throughput and MFU (bf16, >= 1B parameters)"
# (hidden, layers, intermediate, heads, sequence length, batch, steps)
SIZES = {"full": (2048, 16, 5632, 16, 2048, 4, 8), "quick": (1024, 4, 2816, 8, 2048, 4, 4),
         "cpu-check": (64, 2, 128, 4, 128, 2, 4)}


def run(*, quick: bool = False) -> dict:
    if not torch.cuda.is_available():
        return {"title": TITLE, "rows": [], "notes": "Skipped: no CUDA device on this machine."}
    return measure(device="cuda", size="quick" if quick else "full")


def measure(*, device: str, size: str) -> dict:
    """Write, convert and train on ``device``; ``size`` picks a row of SIZES ("cpu-check" exercises the code
    path on a CPU in seconds; its figures mean nothing)."""
    from kept.convert import convert_checkpoint
    from kept.train import TrainConfig
    from kept.train.trainer import fit

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    hidden, layers, inter, heads, length, batch, steps = SIZES[size]
    vocab = 84608
    mixed = "bf16" if device == "cuda" else "no"
    cfg = {"model_type": "orion", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
           "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "tok").mkdir()
        tok = tmp / "tok" / "tokenizer.model"
        _write_sp_model(tok, vocab=vocab)
        t = time.perf_counter()
        n_params = write_teacher(tmp / "teacher", cfg, tokenizer=tok, device=device)
        t_write = time.perf_counter() - t
        _random_corpus(tmp / "corpus", vocab=vocab, length=length, rows=batch * (steps + 2), seed=0)
        t = time.perf_counter()
        fid = convert_checkpoint(source=tmp / "teacher", output=tmp / "student", norm="paper",
                                 calibration=tmp / "corpus", fidelity_tokens=2048, device=device)
        t_convert = time.perf_counter() - t
        results = {}
        for objective in ("xkd_z", "ut"):
            work = tmp / f"work-{objective}"
            tc = TrainConfig(objective=objective, student=str(tmp / "student"), corpus=str(tmp / "corpus"),
                             output=str(tmp / f"out-{objective}"), work_dir=str(work),
                             teacher=str(tmp / "teacher") if objective != "ut" else None,
                             steps=steps, batch_size=batch, lr=1e-5, warmup_steps=1, log_every=1,
                             mixed_precision=mixed, model_dtype="float32",
                             teacher_dtype="bfloat16" if device == "cuda" else "float32",
                             kl_chunk_size=4096, progress=False)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            summary = fit(tc, export=False)  # throughput only: no final export
            wall = time.perf_counter() - t
            rate = _median_rate(work / "train_log.jsonl", skip=2)
            results[objective] = rate
            attn = 6 * layers * hidden * length  # score + value matmuls, fwd+bwd, per token (causal halves ignored)
            flops_tok = 6 * n_params + attn + ((2 * n_params + attn / 3) if objective == "xkd_z" else 0)
            peak = _peak(name)
            print(f"{objective}: {rate:.0f} tokens/s", flush=True)
            rows.append({
                "objective": objective, "params (student)": f"{n_params / 1e9:.2f}B", "tokens/step": batch * length,
                "median tokens/s": round(rate), "TFLOP/s": round(flops_tok * rate / 1e12, 1),
                "MFU": f"{flops_tok * rate / (peak * 1e12):.1%}" if peak else "n/a",
                "peak GPU mem (GiB)": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None,
                "run wall (s)": round(wall, 1), "final loss": round(summary["final_loss"], 4),
            })
        notes = (
            f"Device: {name}; torch {torch.__version__}; attention "
            f"{_attn_impl(tmp / 'student')}. Teacher written in {t_write:.0f} s, converted (paper, fidelity KL "
            f"{fid.get('kl_mean', float('nan')):.3g}) in {t_convert:.0f} s. XKD-z / UT tokens/s ratio "
            f"(same student, same data; the baseline has no teacher forward): "
            f"{results['xkd_z'] / results['ut']:.2f}. Peak bf16 dense TFLOP/s assumed: {_peak(name)}."
        )
    return {"title": TITLE, "rows": rows, "notes": notes}


def write_teacher(out: Path, cfg: dict, *, tokenizer: Path, device: str, num_shards: int = 3) -> int:
    """A random bf16 Orion-format teacher of config ``cfg`` at ``out`` (initialised on ``device``), with LayerNorm
    biases and a mean component in the embeddings, as in trained models. Returns its parameter count."""
    from kept.orion import new_orion_model, save_orion_checkpoint

    with torch.device(device):
        teacher = new_orion_model(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if n.endswith("layernorm.bias") or n == "model.norm.bias":
                p.normal_(0.0, 0.05)
        teacher.model.embed_tokens.weight.add_(0.02)
    n_params = sum(p.numel() for p in teacher.parameters())
    save_orion_checkpoint(teacher, out, tokenizer_model=tokenizer, num_shards=num_shards)
    del teacher
    if device == "cuda":
        torch.cuda.empty_cache()
    return n_params


def _attn_impl(student: Path) -> str:
    from transformers import AutoConfig

    return str(getattr(AutoConfig.from_pretrained(student), "_attn_implementation", None) or "sdpa (default)")


def _write_sp_model(path: Path, *, vocab: int) -> None:
    """A SentencePiece model with Orion's vocabulary size: a small BPE model trained on synthetic text, padded
    with extra unique pieces to ``vocab`` (the GPU run needs the ids, not a good segmentation)."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    words = "alpha beta gamma delta kept orion llama student teacher token corpus".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=12)) for _ in range(500)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=300,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    for i in range(vocab - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581x{i}", -1000.0 - i, pb.ModelProto.SentencePiece.NORMAL
    path.write_bytes(proto.SerializeToString())
