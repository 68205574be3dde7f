"""Code probe: perplexity on code text and greedy answer accuracy (zero-shot transfer of a capability absent
from the transfer corpus, the paper's section 7).

Probe records are ``{"id", "prompt", "answer", "text"}`` with ``text = prompt + answer``. Perplexity is the
token-weighted ``exp`` mean negative log-likelihood over all ``text``s. An answer counts as correct when the
greedy continuation of ``prompt``, whitespace-normalised, starts with the whitespace-normalised answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kept.atomic import write_json
from kept.errors import KeptError
from kept.progress import Progress


@dataclass
class CodeConfig:
    """Code probe on one model."""

    model: str
    probe: str  # JSONL {"id", "prompt", "answer", "text"}
    output: str  # code.json
    model_name: str = ""
    variant: str = ""
    limit: int | None = None  # first N probe items
    batch_size: int = 16
    extra_new_tokens: int = 4  # generated tokens beyond the longest answer
    dtype: str | None = None
    device: str = "cpu"
    details: str | None = None  # optional per-item JSONL (generation, correct, nll)


def _norm(text: str) -> str:
    return " ".join(text.split())


def load_probe(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    from kept.eval.common import read_jsonl, require_keys

    rows = read_jsonl(path, what="code probe")
    for i, r in enumerate(rows, start=1):
        require_keys(r, ("id", "prompt", "answer", "text"), where=f"{path}:{i}")
        if not _norm(r["answer"]):
            raise KeptError(f"{path}:{i}: empty answer")
    return rows[:limit] if limit is not None else rows


def run_code_probe(cfg: CodeConfig) -> dict[str, Any]:
    """Perplexity and greedy accuracy; writes ``cfg.output`` (and ``cfg.details``) atomically."""
    from kept.eval.common import generate, load_eval_model, sequence_nll
    from kept.jsonl import write_jsonl

    items = load_probe(cfg.probe, limit=cfg.limit)
    lm = load_eval_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    total_nll, total_tok = 0.0, 0
    per_item = []
    bar = Progress(len(items), desc=f"code probe {cfg.model_name}: perplexity", unit="item")
    for it in items:
        ids = lm.encode(it["text"])
        if len(ids) < 2:
            raise KeptError(f"{cfg.probe}: item {it['id']!r} text has fewer than two tokens")
        nll = sequence_nll(lm, ids)
        total_nll += float(nll.sum())
        total_tok += int(nll.numel())
        per_item.append({"id": it["id"], "nll": float(nll.sum()), "tokens": int(nll.numel())})
        bar.update()
    max_new = max(len(lm.encode(it["answer"])) for it in items) + cfg.extra_new_tokens
    outs = generate(lm, [lm.encode(it["prompt"]) for it in items], max_new_tokens=max_new, temperature=0.0,
                    batch_size=cfg.batch_size,
                    progress=Progress(len(items), desc=f"code probe {cfg.model_name}: generation", unit="item"))
    correct = 0
    for it, ids, rec in zip(items, outs, per_item):
        gen = lm.tokenizer.decode(ids, skip_special_tokens=True)
        ok = _norm(gen).startswith(_norm(it["answer"]))
        correct += ok
        rec.update(generation=gen, correct=bool(ok))
    out = {
        "model": cfg.model_name,
        "variant": cfg.variant,
        "ppl": math.exp(total_nll / total_tok),
        "accuracy": correct / len(items),
        "n": len(items),
        "tokens": total_tok,
    }
    if cfg.details:
        write_jsonl(cfg.details, per_item)
    write_json(cfg.output, out)
    return out


def humaneval_probe_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probe records from HumanEval-style rows (``task_id``, ``prompt``, ``canonical_solution``): the answer is
    the first non-empty line of the reference solution, the text the prompt plus the whole solution. Nothing
    is executed."""
    rows = []
    for r in records:
        lines = [ln for ln in str(r["canonical_solution"]).splitlines() if ln.strip()]
        if not lines:
            continue
        rows.append({"id": str(r["task_id"]), "prompt": r["prompt"], "answer": lines[0],
                     "text": r["prompt"] + r["canonical_solution"]})
    return rows


def prepare_humaneval_probe(*, output: str, dataset: str = "openai/openai_humaneval", split: str = "test",
                            revision: str | None = None) -> int:
    """Write the code probe of the paper config from HumanEval (via ``datasets``) atomically."""
    import datasets

    from kept.jsonl import write_jsonl

    rows = humaneval_probe_rows(list(datasets.load_dataset(dataset, split=split, revision=revision)))
    if not rows:
        raise KeptError(f"{dataset}: no usable records")
    write_jsonl(output, rows)
    return len(rows)
