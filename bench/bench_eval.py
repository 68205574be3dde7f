"""Toy H6 through lm-eval: the harness run with lm-eval's per-call Jinja compilation (baseline) against
:func:`kept.eval.harness.cache_prompt_templates` (templates compiled once; identical prompts).

Builds a toy world's eval suites (kept.world) and a random toy-size Orion teacher (hidden 128, 2 layers, the
world's vocabulary) in a temporary directory; each variant runs in a fresh process with one thread, and the time
is that of ``evaluate_loaded`` (imports and model loading excluded), median over repeats.

    .venv/bin/python -m bench.bench_eval [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

H6 = [
    {"name": "ARC", "task": "toy_arc", "shots": 25, "metric": "acc_norm,none"},
    {"name": "HellaSwag", "task": "toy_hellaswag", "shots": 10, "metric": "acc_norm,none"},
    {"name": "MMLU", "task": "toy_mmlu", "shots": 5, "metric": "acc,none"},
    {"name": "TruthfulQA", "task": "toy_truthfulqa_mc2", "shots": 0, "metric": "acc,none"},
    {"name": "Winogrande", "task": "toy_winogrande", "shots": 5, "metric": "acc,none"},
    {"name": "GSM8K", "task": "toy_gsm8k", "shots": 5, "metric": "exact_match,strict-match"},
]


def _setup(work: Path, items: int) -> None:
    import glob

    import sentencepiece as spm
    import torch

    from kept.orion import new_orion_model, save_orion_checkpoint
    from kept.world.evaldata import EvalDataConfig, write_eval_data
    from kept.world.generator import WorldSpec
    from kept.world.render import write_world
    from kept.world.tokenizer import train_tokenizer

    write_world(spec=WorldSpec(), output=work / "world")
    tok = work / "tokenizer.model"
    train_tokenizer(text_files=sorted(glob.glob(str(work / "world" / "text" / "*.jsonl"))), output=tok)
    write_eval_data(EvalDataConfig(world=str(work / "world"), tokenizer=str(tok), output=str(work / "eval_data"),
                                   items_per_task=items))
    vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
    torch.manual_seed(0)
    cfg = dict(model_type="orion", vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=1024)
    save_orion_checkpoint(new_orion_model(cfg), work / "teacher", tokenizer_model=tok)


def _child(work: Path, cached: bool, repeats: int) -> dict:
    import time

    import torch

    torch.set_num_threads(1)
    from kept.eval import harness
    from kept.eval.common import load_eval_model

    lm_model = load_eval_model(work / "teacher")
    times, summaries = [], []
    for i in range(repeats):
        cfg = harness.HarnessConfig(
            model=str(work / "teacher"), output=str(work / f"out-{cached}-{i}.json"),
            raw_dir=str(work / f"raw-{cached}-{i}"), suite="h6",
            tasks=[harness.TaskSpec.from_dict(t) for t in H6], task_dir=str(work / "eval_data" / "tasks"),
            include_defaults=False, batch_size=32, bootstrap_iters=0, cache_templates=cached,
        )
        tm = harness._task_manager(cfg.task_dir, False)
        lm = harness.wrap_model(lm_model, cfg)
        t0 = time.perf_counter()
        summaries.append(harness.evaluate_loaded(lm, tm, cfg))
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "values": [c["value"] for c in summaries[0]["columns"]]}


def run(*, quick: bool = False) -> dict:
    items, repeats = (15, 1) if quick else (60, 3)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        _setup(work, items)
        res = {}
        for cached in (False, True):
            proc = subprocess.run([sys.executable, "-m", "bench.bench_eval", "--child", str(work),
                                   "--repeats", str(repeats)] + (["--cached"] if cached else []),
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            res[cached] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = res[False]["seconds"]
    rows = [{"variant": name, "evaluate s (median)": round(r["seconds"], 2), "ratio vs baseline": round(r["seconds"] / base, 3),
             "same scores": r["values"] == res[False]["values"]}
            for name, r in (("lm-eval as shipped (baseline)", res[False]), ("templates compiled once", res[True]))]
    return {"title": "Toy H6 through lm-eval: prompt-template cache", "rows": rows,
            "notes": f"{items} items per task, 6 toy tasks (ARC 25-shot ... GSM8K 5-shot), random 2-layer width-128 "
                     f"teacher, 1 thread, median of {repeats}; imports and model load excluded."}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--cached", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(Path(a.child), a.cached, a.repeats)))
    else:
        out = run(quick=a.quick)
        import pandas as pd

        print(pd.DataFrame(out["rows"]).to_markdown(index=False))
        print(out["notes"])
