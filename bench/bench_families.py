"""Family x norm mapping -> exactness class and measured fidelity against transformers' own class (issue 18).

For every source family (and the options that change the class), a tiny model built with transformers' own class
of the family, written with its own ``save_pretrained``, in two states: *random* (perturbed: random norm gains
and biases, random linear biases, a non-zero embedding mean; :mod:`kept.convert.tiny`) and *trained* (the same,
then 100 AdamW steps of next-token training on toy-world text, :mod:`kept.world`). Each is converted with every
mapping the family allows; the figures compare the full-model forward pass of transformers' own class of the family
(the baseline) with stock ``LlamaForCausalLM`` on the converted checkpoint, on held-out world text (float32):
max |Δ log p| (with the logit offset added back for "exact up to a logit offset"), mean KL(source || Llama) and
top-1 agreement, each with its standard error over the held-out sequences.

    .venv/bin/python -m bench.run families [--quick]
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "families"

CASES = [  # (family, config overrides, label)
    ("olmo", {}, "olmo"),
    ("olmo", {"tie_word_embeddings": True}, "olmo, tied head"),
    ("stablelm", {}, "stablelm (25% rotary, qkv bias)"),
    ("stablelm", {"use_parallel_residual": True}, "stablelm, parallel residual"),
    ("stablelm", {"qk_layernorm": True}, "stablelm, qk_layernorm"),
    ("gpt_neox", {}, "gpt_neox (Pythia: parallel, GELU)"),
    ("gpt_neox", {"use_parallel_residual": False}, "gpt_neox, sequential"),
    ("phi", {}, "phi (parallel, GELU, head bias)"),
]


def _world_text(n_docs: int) -> list[str]:
    from kept.world.generator import World, WorldSpec, build_world
    from kept.world.render import training_text

    world = World(build_world(WorldSpec(n_people=12, n_cities=4, quiz_docs=60, dialogues=40, programs=20)))
    docs = [d["text"] for domain in training_text(world).values() for d in domain if d.get("text")]
    return docs[:: max(1, len(docs) // n_docs)][:n_docs]


def _batches(tok_file: Path, texts: list[str], *, length: int, n: int, seed: int) -> torch.Tensor:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_file))
    stream = [i for t in texts for i in tok.encode(t).ids + [2]]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length - 1, (n,), generator=g).tolist()
    return torch.tensor([stream[s : s + length] for s in starts])


def _train(model: torch.nn.Module, data: torch.Tensor, *, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss = float("nan")
    for step in range(steps):
        batch = data[(step * 8) % len(data) :][:8]
        out = model(batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = float(out.loss.detach())
    model.eval()
    return loss


def _se(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@torch.no_grad()
def _compare(src: Path, out: Path, ids: torch.Tensor, offset: torch.Tensor | None) -> dict:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    t = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False).float().eval()
    s = LlamaForCausalLM.from_pretrained(out, trust_remote_code=False).float().eval()
    lt = torch.log_softmax(t(ids).logits.double(), -1)
    zs = s(ids).logits.double() + (offset if offset is not None else 0)
    ls = torch.log_softmax(zs, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, T)
    top1 = (lt.argmax(-1) == ls.argmax(-1)).double()
    dmax = (lt - ls).abs().amax(dim=(1, 2))
    return {"max |Δ log p|": float(dmax.max()), "KL": float(kl.mean()), "KL se": _se(kl.mean(1)),
            "top-1": float(top1.mean()), "top-1 se": _se(top1.mean(1))}


def _offset(src: Path) -> torch.Tensor:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_families import _offset as offset  # the tests' independent head @ beta_f + head bias

    return offset(src)


def run(*, quick: bool = False) -> dict:
    from kept.convert import convert_checkpoint
    from kept.convert.families import FAMILIES
    from kept.convert.plan import NORMS, OFFSET, check_mapping
    from kept.convert.tiny import new_model, train_bpe, write_checkpoint
    from kept.errors import MappingError

    shutil.rmtree(WORK, ignore_errors=True)
    texts = _world_text(60 if quick else 400)
    tok_dir = WORK / "tokenizer"
    vocab = train_bpe(tok_dir)
    steps = 20 if quick else 100
    train = _batches(tok_dir / "tokenizer.json", texts, length=64, n=8 * steps, seed=0)
    held = _batches(tok_dir / "tokenizer.json", texts, length=64, n=8, seed=1)
    rows = []
    for family, overrides, label in CASES:
        for state in ("random", "trained"):
            model = new_model(family, vocab_size=vocab, **overrides)
            loss = _train(model, train, steps=steps) if state == "trained" else None
            weights = state + (f" (loss {loss:.2f})" if loss else "")
            src = write_checkpoint(model, WORK / f"{label}-{state}" / "src", tokenizer_dir=tok_dir)
            offset = _offset(src)
            arch = FAMILIES[family].read_arch(json.loads((src / "config.json").read_text()), src / "config.json")
            for norm in NORMS:
                try:
                    check_mapping(FAMILIES[family], arch, norm=norm, mlp_target="runtimes", where=str(src))
                except MappingError as exc:
                    rows.append({"source": label, "weights": weights, "norm": norm, "mlp": "", "class":
                                 "refused: " + str(exc).split(": ", 1)[1].split(";")[0]})
                    continue
                for target in (("runtimes", "transformers") if not arch.gated_mlp else ("runtimes",)):
                    out = WORK / f"{label}-{state}" / f"{norm}-{target}"
                    rep = convert_checkpoint(source=src, output=out, norm=norm, mlp_target=target,
                                             fidelity_tokens=0, calibration=_corpus(WORK, train[:8]) if norm == "fit"
                                             else None, fit_tokens=256)
                    cls = rep["exactness"]
                    row = {"source": label, "weights": weights, "norm": norm,
                           "mlp": "" if arch.gated_mlp else target, "class": cls}
                    row.update(_compare(src, out, held, offset if cls == OFFSET else None))
                    rows.append(row)
    notes = (
        "Baseline: transformers' own class of each family (OlmoForCausalLM, StableLmForCausalLM, "
        "GPTNeoXForCausalLM, PhiForCausalLM) on the source checkpoint; ours: LlamaForCausalLM on the conversion. "
        f"Held-out: 8 sequences of 64 tokens of toy-world text (BPE vocabulary {vocab}); '± se' columns are standard "
        "errors over those sequences. 'exact up to a logit offset' rows add the offset (head @ beta_f + head bias, "
        "computed from the source's own tensors) back before comparing. mlp 'runtimes' = SiLU-gated (vLLM and "
        "llama.cpp load it), 'transformers' = the source's GELU (exact, transformers only). fit: gains fitted on "
        f"256 training tokens (not the held-out ones). Trained = {steps} AdamW steps (lr 3e-3, batch 8 x 64) from the perturbed init. "
        "float32 forward passes: 'exact' means equal to float32 rounding (~1e-6)."
    )
    return {"title": "Families: exactness class and fidelity against transformers' own class", "rows": rows,
            "notes": notes}


def _corpus(work: Path, ids: torch.Tensor) -> Path:
    import numpy as np

    out = work / "corpus"
    if not (out / "manifest.json").is_file():
        (out / "shards").mkdir(parents=True)
        np.save(out / "shards" / "00000.npy", ids.numpy().astype(np.int32))
        (out / "manifest.json").write_text(json.dumps({
            "max_length": ids.shape[1], "num_sequences": ids.shape[0], "eos_id": 2, "total_tokens": ids.numel(),
            "tokens_per_language": {"mixed": ids.numel()}, "shards": ["shards/00000.npy"], "source": "bench"}))
    return out


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
