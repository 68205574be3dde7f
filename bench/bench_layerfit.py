"""The layer fit before any training (issue 28, converter part): each approximate family's conversion against its
trained teacher, with and without ``--layer-fit``.

Teachers (bench/graft_teachers.yaml, pretrained on the toy world by the workflow's own rule, as bench_graft's):
``neox`` (GPT-NeoX: parallel residual with two LayerNorms, partial rotary 0.25, GELU) and ``phi`` (Phi: parallel
residual under one LayerNorm, partial rotary 0.5, gelu_new, LM-head bias), both approximate under every mapping (the
block made sequential, GELU -> SiLU-gated); and ``g8`` (Orion) under the paper's mapping, approximate through its
norms only. Each row: ``convert_checkpoint(norm=..., layer_fit=...)`` calibrated on the transfer corpus's first 8192
tokens, measured on its last 8192 (32 sequences, never the calibration's) exactly as bench_graft (teacher in its
own class, student as stock Llama; for ``exact`` the mapping's logit offset added back, so the row measures the
structural approximation alone). "x off" = KL with the fit over KL without, same mapping, same run.

    .venv/bin/python -m bench.run layerfit [--quick]
"""

from __future__ import annotations

from bench.bench_graft import WORK, Teacher, cell, convert, eval_ids, teachers


def run(*, quick: bool = False) -> dict:
    cases = [("neox", "exact"), ("neox", "paper"), ("phi", "exact"), ("phi", "paper"), ("g8", "paper")]
    if quick:
        cases = cases[:1]
    found, corpus, cost = teachers(sorted({t for t, _ in cases}))
    ids = eval_ids(corpus, 2048 if quick else 8192)
    rows = []
    for name in dict.fromkeys(t for t, _ in cases):
        teacher = Teacher(found[name], ids)
        for norm in [n for t, n in cases if t == name]:
            got = {}
            for fit in (False, True):
                out = convert(found[name], corpus, WORK / f"{name}-{norm}-{'fit' if fit else 'plain'}", norm=norm,
                              layer_fit=fit)
                got[fit] = teacher.compare(out, offset=norm == "exact")
            for fit in (False, True):
                f = got[fit]
                rows.append({"teacher": name, "mapping": norm, "layer fit": "on" if fit else "off",
                             "KL ± SE": cell(f), "x off": f"{f['kl'] / got[False]['kl']:.2f}" if fit else "",
                             "top-1": f"{f['top1']:.3f}", "max abs d log p": f"{f['dlogp']:.2f}"})
    notes = (f"Toy teachers pretrained on this machine: {cost}. KL(teacher || student) per token on the corpus's last "
             f"{ids.numel()} tokens ± its standard error over {ids.shape[0]} sequences; 'exact' rows with the "
             "final-norm logit offset (and Phi's LM-head bias) added back, 'paper' rows as converted. --layer-fit: "
             "o_proj refitted to the teacher's attention output, gate/up (parallel blocks) to the pre-activations the "
             "teacher's MLP saw, down_proj to the teacher's layer output; ridge least squares on the first 8192 "
             "corpus tokens, layer by layer on the student's own stream (docs/architecture.md).")
    return {"title": "Layer fit before training: approximate families with and without --layer-fit (toy teachers)",
            "rows": rows, "notes": notes}

