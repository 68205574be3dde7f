"""What a graft costs at Orion-14B's width (issue 28): one decoder layer (hidden 5120, 40 heads of 128, MLP 15360,
random bf16 weights, Orion's on-disk format) grafted to 10 KV heads (H/4) with ``aligned``, ``fit`` and ``fit`` +
``--layer-fit``, on 6144 calibration tokens (12 sequences of 512), against the same conversion without a graft,
measured side by side.

Each conversion runs in a fresh child process (bench/bench_convert.py's, fidelity report off, 2 torch threads) that
reports its wall and CPU seconds inside ``convert_checkpoint`` and its peak resident memory (VmHWM); the calibration
pass records each layer's wall time in conversion.json. The checkpoint has one layer and a vocabulary cut to 1024
rows (embedding and head cost nothing); the plain conversion runs first and last (its two runs bound the machine's
drift). A 40-layer graft costs about 40 times the per-layer figure, plus the plain conversion of the 28 GB
checkpoint (bench.run convert) and the second write the graft adds (the staged model rewritten).

    .venv/bin/python -m bench.run graft_layer [--quick]
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.bench_convert import _convert, make_checkpoint

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "graft_layer"
GiB = 2**30
ORION_LAYER = dict(vocab_size=1024, hidden_size=5120, intermediate_size=15360, num_hidden_layers=1,
                   num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rope_theta=10000.0,
                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                   hidden_act="silu")


def _corpus(out: Path, *, sequences: int, length: int, vocab: int) -> Path:
    """A packed corpus (manifest + one int32 shard) of random ids: the graft's cost does not depend on the text."""
    out.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(0).integers(3, vocab, size=(sequences, length), dtype=np.int32)
    np.save(out / "00000.npy", ids)
    (out / "manifest.json").write_text(json.dumps({"max_length": length, "num_sequences": sequences, "eos_id": 2,
                                                   "shards": ["00000.npy"], "total_tokens": ids.size}))
    return out


def run(*, quick: bool = False) -> dict:
    cfg = dict(ORION_LAYER)
    seqs, length = 12, 512
    if quick:
        cfg.update(hidden_size=1024, intermediate_size=3072, num_attention_heads=8, num_key_value_heads=8)
        seqs = 4
    heads = cfg["num_attention_heads"]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    src = WORK / "orion-layer"
    info = make_checkpoint(src, cfg=cfg, num_shards=1)
    corpus = _corpus(WORK / "corpus", sequences=seqs, length=length, vocab=700)  # the tokenizer's 700 pieces
    tokens = seqs * length
    common = {"threads": 2, "calibration": str(corpus), "fit_tokens": tokens}
    cases = [("plain conversion (exact, no graft)", {}),
             ("graft, kv_init aligned", {"kv_heads": heads // 4, "kv_init": "aligned"}),
             ("graft, kv_init fit", {"kv_heads": heads // 4, "kv_init": "fit"}),
             ("graft, kv_init fit + --layer-fit", {"kv_heads": heads // 4, "kv_init": "fit", "layer_fit": True}),
             ("plain conversion, again", {})]
    runs = []
    for label, extra in cases:
        got = _convert(src, WORK / "out", **common, **extra)
        calib = json.loads((WORK / "out" / "conversion.json").read_text())["calibration_fit"]
        runs.append((label, got, calib["layers"][0]["seconds"] if calib else None))
    plain = [got for label, got, _ in runs if label.startswith("plain")]
    base_s = min(r["seconds"] for r in plain)
    base_peak = min(r["peak"] for r in plain)
    rows = []
    for label, got, layer_s in runs:
        grafted = layer_s is not None
        rows.append({
            "conversion": label,
            "wall s": f"{got['seconds']:.1f}",
            "CPU s": f"{got['cpu']:.1f}",
            "wall - plain's s": f"{got['seconds'] - base_s:.1f}" if grafted else "",
            "calibration pass s per layer": f"{layer_s:.1f}" if grafted else "",
            "40 layers, h": f"{40 * layer_s / 3600:.2f}" if grafted else "",
            "peak RSS GiB": f"{got['peak'] / GiB:.2f}",
            "peak - plain's GiB": f"{(got['peak'] - base_peak) / GiB:.2f}" if grafted else "",
        })
    notes = (f"One layer at {'a quick' if quick else 'Orion-14B'} width (hidden {cfg['hidden_size']}, {heads} heads, "
             f"MLP {cfg['intermediate_size']}; {info['bytes'] / GiB:.2f} GiB bf16 checkpoint), {heads} -> {heads // 4} "
             f"KV heads, {tokens} calibration tokens ({seqs} x {length}), 2 torch threads, on the machine of this "
             "run (CPU; its other load shows in the spread of the two plain runs). 'calibration pass s per layer': "
             "the layer's wall time inside the pass as conversion.json records it (teacher and student layer "
             "forwards, the moments, the group search over all head pairs, the merges, the o_proj and, with "
             "--layer-fit, the gate/down least squares); '40 layers' = 40 x that (the pass streams each layer "
             "once). 'wall - plain's' adds the fixed costs: transformers' model code imported, the embedding and "
             "head, and the staged model rewritten once more. Peak RSS: the child's VmHWM (imports included); the "
             "plain conversion's is its baseline.")
    return {"title": f"Graft cost per layer at {'quick' if quick else 'Orion-14B'} width (one layer, random weights)",
            "rows": rows, "notes": notes}


if __name__ == "__main__":
    import sys

    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
