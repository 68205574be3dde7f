"""XKD-z loss memory and time: the chunked KL (kept.train.objectives) against the naive full-logit KL.

Forward + backward of KL(teacher || student) for T tokens over Orion's vocabulary (V = 84608) with a small hidden
size, from final hidden states and LM-head weights (the part of an XKD-z step that scales with T x V). Each
variant runs in a fresh process; peak memory is the rise of the process's peak RSS over its level after the inputs
exist (CPU) or the rise of torch.cuda.max_memory_allocated (GPU). Times are medians over repeats after a warm-up.

    .venv/bin/python -m bench.bench_kl [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

V = 84608
ROOT = Path(__file__).resolve().parents[1]


def _measure(method: str, *, tokens: int, vocab: int, hidden: int, repeats: int, device: str, chunk: int) -> dict:
    import resource

    import torch

    from kept.train.objectives import chunked_kl, naive_kl

    torch.manual_seed(0)
    dev = torch.device(device)
    hs = (0.5 * torch.randn(tokens, hidden, device=dev)).requires_grad_()
    ws = (0.5 * torch.randn(vocab, hidden, device=dev)).requires_grad_()
    ht = 0.5 * torch.randn(tokens, hidden, device=dev)
    wt = 0.5 * torch.randn(vocab, hidden, device=dev)

    def step() -> float:
        hs.grad = ws.grad = None
        if method == "naive":
            loss = naive_kl(hs @ ws.T, ht @ wt.T)
        else:
            loss = chunked_kl(hs, ws, ht, wt, chunk=chunk, recompute=(method == "chunked"))
        loss.backward()
        return float(loss)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = step()  # warm-up, also the peak-memory measurement
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    grad = ws.grad.float().norm().item()
    return {"method": method, "loss": loss, "grad_norm": grad, "peak_bytes": peak, "time_s": statistics.median(times),
            "times": times}


def _spawn(method: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_kl", "--worker", method] + [
        f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_kl worker {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False, device: str | None = None) -> dict:
    """Chunked (recompute in backward / gradients in forward) vs naive KL, forward + backward."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokens = 512 if quick else 4096
    hidden = 64
    repeats = 2 if quick else 3
    chunk = 128 if quick else 1024
    results = {m: _spawn(m, tokens=tokens, vocab=V, hidden=hidden, repeats=repeats, device=device, chunk=chunk)
               for m in ("naive", "chunked", "chunked_fused")}
    naive = results["naive"]
    rows = []
    for m, r in results.items():
        rows.append({
            "method": {"naive": "naive full logits", "chunked": "chunked, recompute in backward",
                       "chunked_fused": "chunked, gradients in forward"}[m],
            "T x V x d": f"{tokens} x {V} x {hidden}",
            "device": device,
            "peak MiB": round(r["peak_bytes"] / 2**20, 1),
            "memory: naive / this": round(naive["peak_bytes"] / max(r["peak_bytes"], 1), 2),
            "time s (median)": round(r["time_s"], 3),
            "speed: naive time / this": round(naive["time_s"] / r["time_s"], 2),
            "|loss - naive|": f"{abs(r['loss'] - naive['loss']):.1e}",
        })
    notes = (
        f"Forward + backward of the per-token KL(teacher || student) over V = {V} for T = {tokens} tokens, hidden "
        f"{hidden}, chunk {chunk} tokens, float32, on {device}; each method in its own process, time = median of "
        f"{repeats} runs after a warm-up. Peak memory: the rise of the peak RSS (CPU) or of "
        "torch.cuda.max_memory_allocated (GPU) over the level after the inputs were allocated. The naive KL holds "
        "the (T, V) student and teacher logits, their log-softmaxes and gradients at once; the chunked one holds "
        "about four (chunk, V) float32 buffers. Goal (issue 7): at least 4x less peak memory and no slower."
    )
    return {"title": f"XKD-z loss memory: chunked vs naive KL ({device})", "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=V, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        out = _measure(args.worker, tokens=args.tokens, vocab=args.vocab, hidden=args.hidden,
                       repeats=args.repeats, device=args.device or "cpu", chunk=args.chunk)
        print(json.dumps(out))
        return 0
    result = run(quick=args.quick, device=args.device)
    import pandas as pd

    print(f"## {result['title']}\n\n{pd.DataFrame(result['rows']).to_markdown(index=False)}\n\n{result['notes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
