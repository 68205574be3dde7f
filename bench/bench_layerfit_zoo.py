"""The layer fit across the zoo (issue 28, converter part): every family whose conversion with ``kept convert``'s
defaults is approximate, with and without ``--layer-fit``, against the family's own class.

Teachers: tiny checkpoints of :mod:`kept.convert.tiny` (the family's own class, perturbed norms and biases), in
two states as bench_zoo's: *random* (the perturbed init) and *briefly trained* (bench_zoo's 60 AdamW steps of
next-token training on toy-world text). These are not the workflow's pretrained toy teachers (bench_layerfit
measures those: GPT-NeoX, Phi, Orion g8). Each row: ``convert_checkpoint`` with the defaults (no norm, no
mlp_target: the most faithful mapping the family allows), calibrated on the first half of the text (a plain text
file, the source's own tokenizer, ``fit_tokens`` 4096), measured on held-out windows of the second half: per-token
KL(teacher || student) ± its standard error over the windows, top-1 agreement; for an ``exact`` mapping of a source
with a final-norm bias or LM-head bias the logit offset is added back (the rows measure the structural
approximation alone). "x off" = KL with the fit over KL without, same teacher, same windows.

    .venv/bin/python -m bench.run layerfit_zoo [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from bench.bench_zoo import _reference, _se, _tokenize, _train, _windows

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "layerfit_zoo"
N_HELD, STEPS, FIT_TOKENS = 16, 60, 4096
# The families with a sliding window again with the window as long as the context (the tiny configs' window of 8
# tokens is far inside the 64-token windows measured), and Gemma 2 and VaultGemma also without their softcaps:
# what keeps the fit from halving their KL
WINDOWED = ("gemma2", "gemma3_text", "vaultgemma", "cohere2", "olmo3", "exaone4")
ABLATIONS = [(f, {"sliding_window": 128}, f"{f}, window 128 (>= the context)") for f in WINDOWED] + [
    ("gemma2", {"sliding_window": 128, "attn_logit_softcapping": None}, "gemma2, window 128, no attention softcap"),
    ("vaultgemma", {"sliding_window": 128, "attn_logit_softcapping": None, "final_logit_softcapping": None},
     "vaultgemma, window 128, no softcaps")]
REFITS = ("nope_basis", "q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@torch.no_grad()
def _compare(ref: torch.nn.Module, out: Path, ids: torch.Tensor, offset: Any) -> dict[str, Any]:
    """KL(teacher || student) per token, mean and SE over the windows; top-1 agreement."""
    from transformers import LlamaForCausalLM

    student = LlamaForCausalLM.from_pretrained(out).float().eval()
    lt = torch.log_softmax(ref(ids).logits.double(), -1)
    ls = torch.log_softmax(student(ids).logits.double() + offset, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean(1)  # per window
    return {"kl": float(kl.mean()), "se": _se(kl), "top1": float((lt.argmax(-1) == ls.argmax(-1)).double().mean())}


def run(*, quick: bool = False) -> dict:
    from bench.bench_families import _world_text

    from kept.convert import convert_checkpoint
    from kept.convert.plan import APPROX
    from kept.convert.tiny import ZOO, make_checkpoint

    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_zoo import logit_offset  # the tests' independent head @ beta_f + head bias

    shutil.rmtree(WORK, ignore_errors=True)
    texts = _world_text(60 if quick else 400)
    half = len(texts) // 2
    cases = [c for c in ZOO if c[0] in ("qwen3", "falcon", "gemma2")] if quick else ZOO + ABLATIONS
    rows: list[dict[str, Any]] = []
    missed: list[str] = []
    for n, (family, overrides, label) in enumerate(cases):
        for state in ("random", "trained"):
            work = WORK / f"{n}-{state}"
            src = make_checkpoint(work / "src", family, **overrides)
            calib = work / "calibration.txt"
            calib.write_text("\n".join(texts[:half]))
            held = _windows(_tokenize(src, texts[half:]), N_HELD, seed=1)
            ref = _reference(src)
            loss = None
            if state == "trained":  # the family's own class trained, then saved in its own layout again
                loss = _train(ref, _windows(_tokenize(src, texts[:half]), 8 * STEPS, seed=0), steps=STEPS)
                ref.save_pretrained(src)
            got = {}
            for fit in (False, True):
                out = work / ("fit" if fit else "plain")
                rep = convert_checkpoint(source=src, output=out, calibration=calib, fidelity_tokens=0,
                                         fit_tokens=FIT_TOKENS, layer_fit=fit)
                if rep["exactness"] != APPROX:
                    break  # nothing for the layer fit to do (and it refuses)
                offset = logit_offset(src) if rep["norm"] == "exact" else 0.0
                got[fit] = _compare(ref, out, held, offset)
            if not got:
                break
            ratio = got[True]["kl"] / got[False]["kl"]
            fitted = json.loads((work / "fit" / "conversion.json").read_text())["calibration_fit"]
            refitted = " ".join(r.removesuffix("_proj") for r in REFITS if any(r in la for la in fitted["layers"]))
            if ratio > 0.5:
                missed.append(f"{label} ({state}: x{ratio:.2f})")
            for fit in (False, True):
                f = got[fit]
                rows.append({"family": label, "teacher": state + (f" (loss {loss:.2f})" if loss is not None else ""),
                             "mapping": rep["norm"] + (f", mlp {rep['mlp_target']}" if rep.get("mlp_target") else ""),
                             "layer fit": "on" if fit else "off", "KL ± SE": f"{f['kl']:.2e} ± {f['se']:.0e}",
                             "x off": f"{ratio:.2f}" if fit else "", "top-1": f"{f['top1']:.3f}",
                             "refitted": refitted if fit else ""})
    notes = (f"Teachers: kept.convert.tiny checkpoints (hidden 64, 2 layers), 'random' = the perturbed init, "
             f"'trained' = {STEPS} AdamW steps (lr 3e-3, batch 8 x 64) of the family's own class on toy-world text "
             f"(bench_zoo's recipe); not pretrained toy-world teachers (bench_layerfit has those for GPT-NeoX and "
             f"Phi). Calibration: {FIT_TOKENS} tokens of the text's first half; metrics on {N_HELD} held-out "
             "windows of 64 tokens of its second half, ± SE over the windows; 'exact' mappings with the final-norm "
             "and LM-head bias offset added back. Families whose default conversion is not approximate are "
             "not listed (the layer fit refuses them); the last rows are the windowed families again with a window as "
             "long as the context. 'refitted': the maps the pass refitted in any layer (conversion.json's "
             "calibration_fit; 'nope_basis': q and k of a layer the source runs without RoPE put in the balanced "
             "basis). "
             + (f"The fit does NOT halve the KL of: {', '.join(missed)}." if missed
                else "The fit halves the KL of every row."))
    return {"title": "Layer fit across the zoo: approximate families with and without --layer-fit (tiny teachers)",
            "rows": rows, "notes": notes}

