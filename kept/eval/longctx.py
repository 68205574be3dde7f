"""Perplexity against input length (the paper's Figure 4).

For each source (toy: long world documents; paper: English and Korean Wikipedia passages), each document
is cut to its first ``L`` tokens for every configured length ``L``, and the perplexity of that window is
``exp`` of the token-weighted mean negative log-likelihood over all documents long enough for the largest
length. The same documents therefore enter every point of a curve, and teacher and students see
identical token windows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from kept.atomic import write_json
from kept.errors import ConfigError, KeptError
from kept.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class LongCtxConfig:
    """Perplexity-vs-length of one model."""

    model: str  # model directory
    sources: dict[str, str]  # source name -> documents JSONL ({"id", "text", "lang"})
    output: str  # longctx.json
    lengths: list[int]  # input lengths in tokens, ascending
    model_name: str = ""
    variant: str = ""
    max_docs: int | None = None  # documents per source (first N long enough)
    train_max_length: int | None = None  # sequence length the students were trained at (for the plot)
    corpus_manifest: str | None = None  # packed corpus dir or its manifest.json: train_max_length = its max_length
    chunk: int = 4096  # positions per vocabulary-projection chunk
    dtype: str | None = None
    device: str = "cpu"


def _docs(path: str | Path) -> list[dict[str, Any]]:
    from kept.eval.common import read_jsonl, require_keys

    rows = read_jsonl(path, what="long-context documents")
    for i, r in enumerate(rows, start=1):
        require_keys(r, ("id", "text"), where=f"{path}:{i}")
    return rows


def perplexity_curve(lm: Any, docs: Iterable[dict[str, Any]], *, lengths: list[int], max_docs: int | None,
                     chunk: int, where: str) -> dict[str, Any]:
    """``{"lengths", "ppl", "n_docs", "doc_ids", "doc_nll"}`` for one source; ``doc_nll[d][j]`` is document
    d's summed NLL over the ``lengths[j] - 1`` predictions of its first ``lengths[j]`` tokens (for standard
    errors over documents)."""
    from kept.eval.common import sequence_nll

    top = lengths[-1]
    used, sums, per_doc = [], [0.0] * len(lengths), []
    docs = list(docs)
    bar = Progress(len(docs), desc=f"longctx {Path(where).name}", unit="doc")  # docs read (short ones skipped)
    for doc in docs:
        if max_docs is not None and len(used) >= max_docs:
            break
        ids = lm.encode(doc["text"])
        if len(ids) < top:
            bar.update()
            continue
        nll = sequence_nll(lm, ids[:top], chunk=chunk)  # (top - 1,)
        # prefix sums: the window of the first L tokens scores its L - 1 predictions
        doc_sums = [float(nll[: length - 1].sum()) for length in lengths]
        for j, value in enumerate(doc_sums):
            sums[j] += value
        per_doc.append(doc_sums)
        used.append(doc["id"])
        bar.update()
    bar.close()
    if not used:
        raise KeptError(f"{where}: no document has {top} tokens; shorten eval lengths or use longer documents")
    ppl = [math.exp(s / (len(used) * (length - 1))) for s, length in zip(sums, lengths)]
    return {"lengths": list(lengths), "ppl": ppl, "n_docs": len(used), "doc_ids": used, "doc_nll": per_doc}


def corpus_max_length(path: str | Path) -> int:
    """``max_length`` of a packed corpus (its directory or its manifest.json)."""
    import json

    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path
    try:
        value = json.loads(manifest.read_text())["max_length"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise KeptError(f"{manifest}: cannot read max_length ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, int) or value < 1:
        raise KeptError(f"{manifest}: max_length must be a positive integer, found {value!r}")
    return value


def run_longctx(cfg: LongCtxConfig) -> dict[str, Any]:
    """Perplexity at each length for every source; writes ``cfg.output`` atomically."""
    from kept.eval.common import load_eval_model

    lengths = sorted(set(int(x) for x in cfg.lengths))
    if not lengths or lengths[0] < 2:
        raise ConfigError(f"longctx lengths must be integers >= 2, found {cfg.lengths!r}")
    if not cfg.sources:
        raise ConfigError("longctx: no sources configured")
    docs = {name: _docs(path) for name, path in cfg.sources.items()}
    train_max_length = cfg.train_max_length
    if cfg.corpus_manifest is not None:
        train_max_length = corpus_max_length(cfg.corpus_manifest)
    lm = load_eval_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    if lm.max_positions and lengths[-1] > lm.max_positions:
        log.warning("%s: max_position_embeddings %d < longest eval length %d (evaluating beyond it)",
                    cfg.model, lm.max_positions, lengths[-1])
    out = {
        "model": cfg.model_name,
        "variant": cfg.variant,
        "train_max_length": train_max_length,
        "max_position_embeddings": lm.max_positions or None,
        "sources": {
            name: perplexity_curve(lm, rows, lengths=lengths, max_docs=cfg.max_docs, chunk=cfg.chunk,
                                   where=str(cfg.sources[name]))
            for name, rows in docs.items()
        },
    }
    write_json(cfg.output, out)
    return out


@dataclass
class WikiDocsConfig:
    """Long Wikipedia passages for the paper config, chosen by a fixed rule."""

    output: str  # JSONL {"id", "text", "lang"}
    dataset: str = "wikimedia/wikipedia"
    subset: str = "20231101.en"
    lang: str = "en"
    n_docs: int = 20
    min_chars: int = 200_000  # articles at least this long (about 50K+ tokens)
    max_chars: int | None = None  # cut each text to this many characters
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def select_long_docs(records: Iterable[dict[str, Any]], *, n_docs: int, min_chars: int,
                     max_chars: int | None, lang: str) -> list[dict[str, Any]]:
    """The rule: the first ``n_docs`` articles, in dataset order, whose text has at least ``min_chars``
    characters (cut to ``max_chars``)."""
    out = []
    for r in records:
        text = r.get("text") or ""
        if len(text) >= min_chars:
            out.append({"id": str(r.get("id", len(out))), "text": text[:max_chars] if max_chars else text,
                        "lang": lang, "title": r.get("title", "")})
            if len(out) >= n_docs:
                break
    return out


def prepare_wiki_docs(cfg: WikiDocsConfig) -> int:
    """Stream the Wikipedia dump with ``datasets`` and write the selected passages atomically."""
    import datasets

    from kept.jsonl import write_jsonl

    stream = datasets.load_dataset(cfg.dataset, cfg.subset, split="train", streaming=True, revision=cfg.revision)
    rows = select_long_docs(stream, n_docs=cfg.n_docs, min_chars=cfg.min_chars, max_chars=cfg.max_chars,
                            lang=cfg.lang)
    if len(rows) < cfg.n_docs:
        raise KeptError(f"{cfg.dataset}/{cfg.subset}: only {len(rows)} articles with >= {cfg.min_chars} chars")
    write_jsonl(cfg.output, rows)
    return len(rows)
