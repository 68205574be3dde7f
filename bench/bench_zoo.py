"""The zoo sweep (issue 27): every source family -> stock Llama with the defaults of ``kept convert SRC OUT``, against
the family's own class, in two states -- *random* (tiny, perturbed: random norm gains and biases, non-trivial
multipliers; :mod:`kept.convert.tiny`) and *trained* (the same, then AdamW steps of next-token training on toy-world
text) -- and GENERATES docs/zoo.md: family -> mapping -> exactness class -> max |Δ log p| (offset added back where
the class says so), KL and top-1 agreement (± standard error over held-out sequences) -> which runtimes load the
output (conversion.json's ``runtimes``).

    .venv/bin/python -m bench.run zoo [--quick]       # also writes docs/zoo.md (not with --quick)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "zoo"
DOC = HERE.parent / "docs" / "zoo.md"
SEQ, N_HELD = 64, 8


def _tokenize(src: Path, texts: list[str]) -> list[int]:
    """The source's own tokenizer (tokenizer.json, else its SentencePiece model) over the texts, EOS-joined."""
    if (src / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        return [i for t in texts for i in tok.encode(t).ids + [2]]
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return [i for t in texts for i in sp.encode(t) + [2]]


def _windows(stream: list[int], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - SEQ - 1, (n,), generator=g).tolist()
    return torch.tensor([stream[s : s + SEQ] for s in starts])


def _reference(src: Path) -> torch.nn.Module:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_zoo import reference  # the family's own class (transformers', or kept's port of remote code)

    return reference(src)


def _train(model: torch.nn.Module, data: torch.Tensor, *, steps: int) -> float:
    """Next-token AdamW steps on ``data`` (any class whose forward returns ``.logits``); the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        batch = data[(step * 8) % len(data) :][:8]
        logits = model(batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def _se(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@torch.no_grad()
def _compare(ref: torch.nn.Module, out: Path, ids: torch.Tensor, offset: Any) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    student = LlamaForCausalLM.from_pretrained(out, trust_remote_code=False).float().eval()
    lt = torch.log_softmax(ref(ids).logits.double(), -1)
    ls = torch.log_softmax(student(ids).logits.double() + offset, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, T)
    top1 = (lt.argmax(-1) == ls.argmax(-1)).double()
    return {"max |Δ log p|": f"{float((lt - ls).abs().max()):.1e}",
            "KL ± se": f"{float(kl.mean()):.1e} ± {_se(kl.mean(1)):.0e}",
            "top-1 ± se": f"{float(top1.mean()):.3f} ± {_se(top1.mean(1)):.3f}"}


def _runtimes(conv: dict[str, Any]) -> str:
    """Which runtimes load the output as transformers computes it (from conversion.json's ``runtimes``)."""
    run = conv["runtimes"]
    ok = [r for r, text in run.items() if text.startswith(("loads", "converts"))]
    caveat = [r for r, text in run.items() if "not checked" in text or "ignores" in text]
    return ", ".join(ok) + (f" ({', '.join(caveat)}: see card)" if caveat else "") + (
        "" if len(ok) > 1 else " only")


def run(*, quick: bool = False) -> dict:
    from bench.bench_families import _world_text

    from kept.convert import convert_checkpoint
    from kept.convert.families import FAMILIES
    from kept.convert.plan import OFFSET
    from kept.convert.tiny import ZOO, make_checkpoint

    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_zoo import logit_offset  # the tests' independent head @ beta_f + head bias

    shutil.rmtree(WORK, ignore_errors=True)
    texts = _world_text(60 if quick else 400)
    steps = 10 if quick else 60
    cases = ZOO[:6] if quick else ZOO
    rows: list[dict[str, Any]] = []
    for n, (family, overrides, label) in enumerate(cases):
        for state in ("random", "trained"):
            src = make_checkpoint(WORK / f"{n}-{state}" / "src", family, **overrides)
            stream = _tokenize(src, texts)
            held = _windows(stream, N_HELD, seed=1)
            ref = _reference(src)
            loss = None
            if state == "trained":  # train the family's own class, then save it in its own layout again
                loss = _train(ref, _windows(stream, 8 * steps, seed=0), steps=steps)
                ref.save_pretrained(src)
            out = WORK / f"{n}-{state}" / "out"
            rep = convert_checkpoint(source=src, output=out, fidelity_tokens=0)
            conv = json.loads((out / "conversion.json").read_text())
            offset = logit_offset(src) if rep["exactness"] == OFFSET else 0.0
            row = {"family": label, "weights": state + (f" (loss {loss:.2f})" if loss is not None else ""),
                   "class": FAMILIES[family].hf_class, "mapping": f"{rep['norm']}"
                   + (f", mlp {rep['mlp_target']}" if rep.get("mlp_target") else ""),
                   "exactness": rep["exactness"]}
            row.update(_compare(ref, out, held, offset))
            row["runtimes (as transformers computes it)"] = _runtimes(conv)
            row["what Llama cannot hold"] = "; ".join(d["change"].split(":")[0] for d in rep["divergences"]) or "-"
            rows.append(row)
    notes = (
        f"Baseline: each family's own class (transformers' `{{family}}ForCausalLM`, `trust_remote_code=False`; for "
        f"InternLM2 and Baichuan2 kept's plain-PyTorch port of their published modeling code, kept.convert.remote) on "
        f"the source checkpoint; ours: stock `LlamaForCausalLM` on the conversion written by `convert_checkpoint` "
        f"with its defaults (no norm, no mlp_target: the most faithful mapping the family allows; the fitted scales "
        f"of the norms Llama cannot hold use the built-in calibration sample). Held-out: {N_HELD} windows of {SEQ} "
        f"tokens of toy-world text under each source's own tokenizer; '± se' over those windows. float32 forward "
        f"passes: 'exact' is equal to float32 rounding (~1e-6; every exact row is <= 1e-4). 'exact up to a logit "
        f"offset' rows add the offset (head @ beta_f + head bias, from the source's own tensors) back. Trained = "
        f"{steps} AdamW steps (lr 3e-3, batch 8 x {SEQ}) of the family's own class from the perturbed init. Runtimes: "
        f"transformers loads every output; vLLM and llama.cpp compute only SiLU MLPs (a GELU / relu2 / xIELU output "
        f"is exact in transformers only; `--mlp-target runtimes` writes the SiLU form where one exists). llama.cpp "
        f"is measured on qwen2, granite, gemma, phi3 and glm outputs by `python -m bench.run llamacpp`."
    )
    result = {"title": "The zoo: every family with the defaults, against its own class", "rows": rows, "notes": notes}
    if not quick:
        _write_doc(result)
    return result


def _write_doc(result: dict) -> None:
    """docs/zoo.md: the table as generated, with the command and date."""
    from bench.run import section

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        "# The zoo: every dense decoder family -> stock Llama\n\n"
        "Generated by `python -m bench.run zoo` (bench/bench_zoo.py) -- do not edit by hand. Each row converts a "
        "tiny checkpoint of the family with `kept convert SRC OUT`'s defaults and compares stock `LlamaForCausalLM` "
        "with the family's own class. What each exactness class means, and the algebra of every mapping: "
        "docs/architecture.md (\"The converter\"); the families refused (learned absolute / ALiBi positions) and "
        "the names that are not what they seem: README (\"Source families\").\n\n"
        f"_Generated {stamp}._\n\n"
    )
    DOC.write_text(head + section(result) + "\n")


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
