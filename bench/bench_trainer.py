"""Trainer throughput: our XKD-z step (kept.train.train) against TRL's GKDTrainer with lmbda = 0.

GKD with ``lmbda = 0`` (no on-policy generation) and ``beta = 0`` is off-policy forward KL(teacher || student) on
the given sequences: the XKD-z objective. Both trainers get the same tiny student (a stock Llama made from a random
Orion teacher by the paper's mapping), the same frozen teacher (Orion on the StableLm runtime), the same packed
sequences, batch, AdamW settings and cosine schedule, on CPU in float32 with one thread. Each run is a fresh
process; throughput is steady-state tokens/s between the end of a warm-up step and the last step; memory is the
process's peak RSS. TRL is a bench-only dependency (bench/requirements.txt pins the release used).

    .venv/bin/python -m bench.bench_trainer [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# the shared tiny world


def make_world(root: Path, *, vocab: int, hidden: int, layers: int, seq: int, n_seq: int) -> dict[str, str]:
    """tokenizer, Orion teacher, stock-Llama student (paper mapping), packed corpus."""
    import numpy as np
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kept.orion import new_orion_model, save_orion_checkpoint
    from kept.tokenizer import load_hf_tokenizer

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 6))) for _ in range(200)]
    (root / "text.txt").write_text("\n".join(" ".join(rng.choice(words, size=10)) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "sp"), vocab_size=64,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    torch.manual_seed(0)
    orion_cfg = {"model_type": "orion", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
                 "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "max_position_embeddings": seq, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "initializer_range": 0.1}
    teacher = new_orion_model(orion_cfg)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    save_orion_checkpoint(teacher, root / "teacher", tokenizer_model=root / "sp.model")
    # the paper's mapping: every tensor copied, g = gamma, beta dropped
    student = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    src = teacher.state_dict()
    student.load_state_dict({k: v for k, v in src.items() if not k.endswith(".bias")}, strict=True)
    student.save_pretrained(root / "student")
    tok = load_hf_tokenizer(root / "teacher")
    tok.save_pretrained(root / "student")
    (root / "corpus" / "shards").mkdir(parents=True)
    np.save(root / "corpus" / "shards" / "00000.npy", rng.integers(3, vocab, size=(n_seq, seq)).astype(np.int32))
    (root / "corpus" / "manifest.json").write_text(json.dumps(
        {"max_length": seq, "num_sequences": n_seq, "eos_id": 2, "tokens_per_language": {"xx": n_seq * seq},
         "total_tokens": n_seq * seq, "shards": ["shards/00000.npy"], "source": "bench", "seed": 0}))
    return {"teacher": str(root / "teacher"), "student": str(root / "student"), "corpus": str(root / "corpus")}


# ---------------------------------------------------------------------------------------------------------------
# workers (one per process)


def _ours(world: dict, *, steps: int, warm: int, batch: int, recompute: bool, out: Path) -> dict:
    from kept.train import TrainConfig, train

    cfg = TrainConfig(objective="xkd_z", student=world["student"], teacher=world["teacher"], corpus=world["corpus"],
                      output=str(out / "model"), work_dir=str(out), steps=steps, batch_size=batch, lr=1e-3,
                      warmup_steps=2, weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0, log_every=warm,
                      kl_recompute=recompute, progress=False)
    train(cfg)
    log = {e["step"]: e for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
    seconds = log[steps]["elapsed_s"] - log[warm]["elapsed_s"]
    return {"seconds": seconds, "tokens": log[steps]["tokens"] - log[warm]["tokens"], "loss_first": log[1]["loss"],
            "loss_last": log[steps]["loss"]}


def _trl(world: dict, *, steps: int, warm: int, batch: int, out: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from kept.models import load_model
    from kept.train.data import BatchSchedule, PackedCorpus

    corpus = PackedCorpus(world["corpus"])
    sched = BatchSchedule(corpus, seed=0, batch_size=batch, grad_accum=1)
    order = np.concatenate([sched.indices(s, 0) for s in range(steps)])  # our data order, fed sequentially
    ids = corpus.get(order).tolist()
    data = Dataset.from_dict({"input_ids": ids})

    def collate(rows):
        x = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks[state.global_step] = time.perf_counter()

    student = AutoModelForCausalLM.from_pretrained(world["student"], dtype=torch.float32)
    teacher = load_model(world["teacher"], dtype="float32")
    args = GKDConfig(output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=2,
                     weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, lmbda=0.0, beta=0.0,
                     temperature=1.0, logging_steps=warm, save_strategy="no", report_to=[], use_cpu=True,
                     dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
                     max_length=corpus.max_length, shuffle_dataset=False)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(world["student"]), data_collator=collate,
                         callbacks=[Clock()])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": marks[steps] - marks[warm], "tokens": (steps - warm) * batch * corpus.max_length,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def _worker(kind: str, world: dict, **kw) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        if kind == "trl":
            res = _trl(world, out=Path(tmp), **kw)
        else:
            res = _ours(world, out=Path(tmp), recompute=(kind == "ours_recompute"), **kw)
    res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


def _spawn(kind: str, world: dict, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_trainer", "--worker", kind, "--world", json.dumps(world),
           "--params", json.dumps(kw)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_trainer worker {kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False) -> dict:
    """Steady-state tokens/s and peak RSS: ours (two KL modes) vs TRL GKDTrainer(lmbda=0, beta=0)."""
    import importlib.metadata as md

    try:
        trl_version = md.version("trl")
    except md.PackageNotFoundError:
        trl_version = None
    size = dict(vocab=8192, hidden=64, layers=2, seq=128) if quick else dict(vocab=32768, hidden=128, layers=2,
                                                                                seq=256)
    batch, warm, steps, repeats = (4, 3, 9, 1) if quick else (4, 5, 25, 3)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        world = make_world(Path(tmp), n_seq=batch * steps, **size)
        kinds = ["ours_fused", "ours_recompute"] + (["trl"] if trl_version else [])
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(repeats):  # interleaved, so drifting machine load hits every trainer alike
            for kind in kinds:
                runs[kind].append(_spawn(kind, world, steps=steps, warm=warm, batch=batch))
    med = {k: {"tps": statistics.median(r["tokens"] / r["seconds"] for r in rs),
               "rss": statistics.median(r["peak_rss"] for r in rs), "first": rs[0]["loss_first"],
               "last": rs[0]["loss_last"]} for k, rs in runs.items()}
    base = med.get("trl")
    names = {"ours_fused": "kept.train XKD-z (KL gradients in forward)",
             "ours_recompute": "kept.train XKD-z (KL recompute in backward)",
             "trl": f"TRL {trl_version} GKDTrainer, lmbda=0, beta=0"}
    rows = []
    for k, m in med.items():
        rows.append({
            "trainer": names[k],
            "tokens/s (median)": round(m["tps"]),
            "vs TRL tokens/s": round(m["tps"] / base["tps"], 2) if base else None,
            "peak RSS MiB": round(m["rss"] / 2**20),
            "vs TRL peak RSS": round(m["rss"] / base["rss"], 2) if base else None,
            "loss first -> last": f"{m['first']:.3f} -> {m['last']:.3f}" if m["first"] is not None else "",
        })
    notes = (
        f"Tiny Llama student / Orion teacher: vocab {size['vocab']}, hidden {size['hidden']}, {size['layers']} layers; "
        f"{batch} sequences of {size['seq']} tokens per step, {steps} steps (throughput over steps {warm}..{steps}), "
        f"AdamW lr 1e-3 cosine, float32, CPU, 1 thread; medians of {repeats} interleaved runs, each in its own "
        "process. TRL's loss covers T-1 positions per sequence (shifted labels), ours all T; tokens/s counts B x T "
        "for both. TRL computes full (B, T, V) student and teacher logits; ours projects the LM head chunk by chunk. "
        "Goal (issue 7): at least 1.0x TRL's tokens/s."
        + ("" if trl_version else " TRL is not installed here, so only our two modes ran (pip install trl).")
    )
    return {"title": "Trainer throughput: XKD-z step vs TRL GKD (lmbda = 0)", "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, json.loads(args.world), **json.loads(args.params))))
        return 0
    result = run(quick=args.quick)
    import pandas as pd

    print(f"## {result['title']}\n\n{pd.DataFrame(result['rows']).to_markdown(index=False)}\n\n{result['notes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
