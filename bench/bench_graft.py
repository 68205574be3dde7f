"""MHA -> GQA graft before any training (issue 28, converter part): how far each closed-form init starts from its
trained teacher, and the KV cache it leaves, measured in transformers' cache.

Teacher: ``g8`` of bench/graft_teachers.yaml, the toy base recipe with heads to merge (8 heads of 16 dims, 4 layers,
hidden 128), pretrained on the toy world by the workflow's own rule (the bench runs Snakemake for it if it is
missing, and prints what that cost). Each row is ``kept.convert.convert_checkpoint(norm="exact", kv_heads=G,
kv_init=...)`` from that teacher, calibrated on the transfer corpus's first 8192 tokens and measured on its last 8192
(32 sequences of 256, never the calibration's): per-token KL(teacher || student), the teacher in its own transformers
class and the student as stock ``LlamaForCausalLM`` with the exact mapping's logit offset added back (its one
residual, so the rows measure the graft alone), ± its standard error over the 32 sequences; "x mean" = the row's KL
over ``mean``'s at the same G, measured in the same run. KV-cache bytes per token: the bytes of the keys and values
transformers' ``DynamicCache`` holds after a 256-token forward, divided by 256 (the teacher in its own runtime).

    .venv/bin/python -m bench.run graft [--quick]
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "graft"
RESULTS = ROOT / "results" / "graft-bench"  # bench/graft_teachers.yaml's results directory
SNAKEMAKE = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "--configfile", "config.yaml",
             "bench/graft_teachers.yaml", "--"]


def teachers(names: list[str]) -> tuple[dict[str, Path], Path, str]:
    """The pretrained toy teachers ``names`` and the transfer corpus, built by the workflow if missing; and what
    their pretraining cost (wall time of each pretrain_teacher job on 2 cores, from its Snakemake benchmark)."""
    targets = [RESULTS / "teachers" / n for n in names] + [RESULTS / "corpus"]
    if not all((t / "config.json").exists() or (t / "manifest.json").exists() for t in targets):
        subprocess.run(SNAKEMAKE + [str(t.relative_to(ROOT)) for t in targets], cwd=ROOT, check=True)
    cost = []
    for n in names:
        tsv = RESULTS / "benchmarks" / "data" / f"pretrain_teacher-{n}.tsv"
        if tsv.is_file():
            row = next(csv.DictReader(tsv.open(), delimiter="\t"))
            cost.append(f"{n} {float(row['s']) / 60:.0f} min")
    return ({n: RESULTS / "teachers" / n for n in names}, RESULTS / "corpus",
            "; ".join(cost) or "pretraining cost not recorded")


class Teacher:
    """A teacher in its own transformers class, its log-probs on the evaluation ids computed once, and the logit
    offset stock Llama cannot hold under the exact mapping (head @ final beta + head bias, the converter's own
    :func:`kept.convert.ops.logit_offset`)."""

    def __init__(self, directory: Path, ids: torch.Tensor) -> None:
        from kept.checkpoint import TensorReader
        from kept.convert.families import read_source
        from kept.convert.ops import logit_offset
        from kept.convert.plan import plan_conversion
        from kept.convert.writer import _Source
        from kept.models import load_model

        self.ids = ids
        model = load_model(directory, dtype=torch.float32)
        with torch.no_grad():
            self.logp = [torch.log_softmax(model(row[None]).logits[0].double(), -1) for row in ids]
        family, arch, _ = read_source(directory)
        with TensorReader(directory) as reader:
            shapes = {n: reader.info(n).shape for n in reader.names()}
            plan = plan_conversion(family=family, arch=arch, source_shapes=shapes, norm="exact", dtype="float32")
            self.offset = logit_offset(_Source(reader), **plan.offset)

    def compare(self, student: Path, *, offset: bool) -> dict[str, Any]:
        """Per-token KL(teacher || student), mean ± SE over sequences; top-1 agreement; max |d log p|. ``offset``:
        add the exact mapping's logit offset to the student's logits first."""
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
        kl, top1, dmax = [], [], 0.0
        with torch.no_grad():
            for row, lt in zip(self.ids, self.logp):
                z = model(row[None]).logits[0].double() + (self.offset if offset else 0)
                ls = torch.log_softmax(z, -1)
                kl.append(float((lt.exp() * (lt - ls)).sum(-1).mean()))
                top1.append(float((lt.argmax(-1) == ls.argmax(-1)).double().mean()))
                dmax = max(dmax, float((lt - ls).abs().max()))
        per = torch.tensor(kl, dtype=torch.float64)
        return {"kl": float(per.mean()), "se": float(per.std() / math.sqrt(per.numel())),
                "top1": sum(top1) / len(top1), "dlogp": dmax, "per_sequence": kl, "n": per.numel()}


def kv_bytes_per_token(model_dir: Path, *, tokens: int = 256) -> float:
    """Bytes of keys and values in transformers' DynamicCache after one forward of ``tokens`` tokens, per token."""
    from kept.models import kv_bytes_per_token as measured

    return measured(model_dir, tokens=tokens, dtype=torch.float32)


def convert(teacher: Path, corpus: Path, out: Path, **kwargs: Any) -> Path:
    """The conversion (calibration: the corpus's first 8192 tokens), without the converter's own fidelity pass (the
    bench measures every row the same way, :meth:`Teacher.compare`)."""
    from kept.convert import convert_checkpoint

    if out.exists():
        shutil.rmtree(out)
    convert_checkpoint(source=teacher, output=out, norm=kwargs.pop("norm", "exact"), calibration=corpus,
                       fidelity_tokens=0, fit_tokens=8192, **kwargs)
    return out


def eval_ids(corpus: Path, n_tokens: int) -> torch.Tensor:
    """The corpus's last sequences (the calibration reads its first)."""
    from kept.fidelity import calibration_tokens

    return calibration_tokens(corpus, n_tokens=n_tokens, from_end=True)


def cell(f: dict[str, Any]) -> str:
    return f"{f['kl']:.4f} ± {f['se']:.4f}"


def run(*, quick: bool = False) -> dict:
    found, corpus, cost = teachers(["g8"])
    src = found["g8"]
    WORK.mkdir(parents=True, exist_ok=True)
    heads = json.loads((src / "config.json").read_text())["num_attention_heads"]
    teacher = Teacher(src, eval_ids(corpus, 2048 if quick else 8192))
    base = teacher.compare(convert(src, corpus, WORK / "exact"), offset=True)
    rows = [{"G (KV heads)": f"{heads} (teacher)", "init": "exact mapping, no graft", "KL ± SE": cell(base),
             "x mean": "", "top-1": f"{base['top1']:.3f}", "max abs d log p": f"{base['dlogp']:.3f}",
             "KV bytes/token (measured)": f"{kv_bytes_per_token(src):.0f}", "per-layer groups": ""}]
    for g in [heads // 2] if quick else [heads // 2, heads // 4]:
        kl_mean = None
        for init, extra in (("mean", {}), ("aligned", {}), ("fit", {}), ("fit + layer fit", {"layer_fit": True})):
            out = convert(src, corpus, WORK / f"g{g}-{init.replace(' ', '')}", kv_heads=g, kv_init=init.split()[0],
                          **extra)
            f = teacher.compare(out, offset=True)
            kl_mean = f["kl"] if init == "mean" else kl_mean
            conv = json.loads((out / "conversion.json").read_text())
            measured = kv_bytes_per_token(out)
            assert measured == conv["graft"]["kv_cache_bytes_per_token"]["output"], (measured, conv["graft"])
            groups = [layer["groups"] for layer in conv["calibration_fit"]["layers"]]
            rows.append({"G (KV heads)": f"{g} (H/{heads // g})", "init": init, "KL ± SE": cell(f),
                         "x mean": f"{f['kl'] / kl_mean:.2f}", "top-1": f"{f['top1']:.3f}",
                         "max abs d log p": f"{f['dlogp']:.3f}", "KV bytes/token (measured)": f"{measured:.0f}",
                         "per-layer groups": " ".join("".join(f"({','.join(map(str, gr))})" for gr in lay)
                                                      for lay in groups)})
    notes = (f"Teacher g8: toy base recipe, 8 heads x 16 dims, 4 layers, hidden 128, 300 steps of 16 x 512 tokens "
             f"(pretraining on this machine: {cost}). Calibration: the corpus's first 8192 tokens; metrics: its last "
             f"{teacher.ids.numel()} tokens ({base['n']} sequences): KL(teacher || student) per token, teacher in its "
             "own transformers class, student as stock LlamaForCausalLM with the exact mapping's final-norm logit "
             "offset added back (so the first row is float error and the others the graft alone). 'x mean': KL over "
             "mean's at the same G. 'fit + layer fit' adds --layer-fit (o_proj and down_proj refitted to the "
             "teacher's attention and layer outputs). KV bytes/token: float32 keys and values in transformers' "
             "DynamicCache after a 256-token forward, measured; conversion.json's computed figure equals it in every "
             "row (asserted). Groups: the source KV heads merged into each new KV head, per layer (mean: contiguous, "
             "as the GQA paper; aligned / fit: chosen from the calibration moments, kept where they beat contiguous).")
    return {"title": "MHA -> GQA graft before training: KL to the trained teacher per G and init (toy g8 teacher)",
            "rows": rows, "notes": notes}


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
