"""The packed transfer corpus: balance languages to a token budget, join documents with EOS, pack to max_length.

One code path for the paper and the toy world. The paper config reads MIRACL (``miracl/miracl-corpus``,
records ``{docid, title, text}``, one file set per language) through ``datasets`` from local files: the fetch
stage downloads them on the submitting host (:func:`fetch_miracl`); the toy config reads the world's encyclopedic
passages (same fields plus ``lang``). Each document is ``title + "\\n" + text``.

Coverage (toy world only): with ``coverage`` < 1 the corpus is a narrow slice of what the teachers know: only
documents whose ``about`` entities are all covered (:func:`kept.world.generator.covered_entities`) enter it, so
the facts of the other entities are never stated in it, in any wording or language; the manifest lists the
uncovered entities and the documents left out.

Balancing: every language gets ``token_budget // len(languages)`` tokens (EOS included). The next document is
drawn from a language chosen at random with weight equal to its remaining budget, so languages interleave and
run out together; the last document of a language is cut to land exactly on its budget. A language whose source
runs dry is read again in a new shuffled order (``passes_per_language`` records how often).

Packing: documents, each followed by EOS, are concatenated and cut into rows of ``max_length`` tokens (a document
may continue on the next row); the last row is filled up with EOS (``padding_tokens``). Output: ``manifest.json``
and ``shards/NNNNN.npy`` (int32, shape (n, max_length)), written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from kept.atomic import atomic_dir
from kept.errors import ConfigError, KeptError
from kept.jsonl import read_jsonl

MIRACL_REPO = "miracl/miracl-corpus"
# Files of one language in the MIRACL corpus repo (the repo's loading script is not run; datasets >= 4 cannot).
MIRACL_FILES = "miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz"


@dataclass
class CorpusConfig:
    """Settings of one packed corpus."""

    output: str  # corpus directory (manifest.json + shards/)
    tokenizer: str  # SentencePiece tokenizer.model, or a directory holding one
    source: str = "world"  # "world" (toy passages) | "miracl"
    languages: list[str] = field(default_factory=lambda: ["ko", "en", "zh", "ja"])
    token_budget: int = 400_000  # total tokens, split evenly across languages
    max_length: int = 256  # tokens per packed sequence
    seed: int = 0
    passages: str | None = None  # source "world": the world's text/passages.jsonl
    world_texts: list[str] = field(default_factory=list)  # source "world": other world text files (quiz, dialogue,
    # code: text/<domain>.jsonl) whose documents join each language's pool (the corpus-breadth ablation)
    coverage: float = 1.0  # source "world": share of the entities whose documents enter (a narrow slice below 1)
    world: str | None = None  # source "world" with coverage < 1: the world directory (world.json: who is covered)
    miracl_repo: str = MIRACL_REPO
    miracl_revision: str | None = None  # pinned commit of the MIRACL repo (source "miracl")
    data_files: dict[str, list[str]] | None = None  # source "miracl": per-language files instead of the hub
    shuffle_buffer: int = 10_000  # MIRACL streaming shuffle buffer (documents)
    rows_per_shard: int = 4096

    def __post_init__(self) -> None:
        if self.source not in ("world", "miracl"):
            raise ConfigError(f"corpus: source {self.source!r} must be 'world' or 'miracl'")
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ConfigError(f"corpus: languages {self.languages!r} must be a non-empty list without repeats")
        if self.max_length < 2:
            raise ConfigError(f"corpus: max_length {self.max_length} must be >= 2")
        if self.token_budget < len(self.languages) * 2:
            raise ConfigError(f"corpus: token_budget {self.token_budget} is too small for {len(self.languages)} languages")
        if self.source == "world" and not self.passages:
            raise ConfigError("corpus: source 'world' needs the passages file (key 'passages')")
        if self.world_texts and self.source != "world":
            raise ConfigError(f"corpus: world_texts {self.world_texts!r} only apply to source 'world'")
        if not 0.0 < self.coverage <= 1.0:
            raise ConfigError(f"corpus: coverage {self.coverage!r} must be in (0, 1]")
        if self.coverage < 1.0 and (self.source != "world" or not self.world):
            raise ConfigError("corpus: coverage < 1 selects entities of the toy world: it needs source 'world' and "
                              "the world directory (key 'world')")


# ---- sources ---------------------------------------------------------------------------------------------------
def document_text(record: dict[str, Any]) -> str:
    """A passage record as one document: its title line, then its text."""
    title = (record.get("title") or "").strip()
    text = record.get("text") or ""
    return f"{title}\n{text}" if title else text


def _covered_records(path: Path, lang: str, covered: set[str] | None, dropped: dict[str, int]) -> list[str]:
    """The documents of ``path`` in ``lang`` whose ``about`` entities are all in ``covered`` (all, if None);
    ``dropped[lang]`` counts the others."""
    docs = []
    for i, rec in enumerate(read_jsonl(path, what="world text"), start=1):
        if rec.get("lang") != lang:
            continue
        if covered is not None:
            about = rec.get("about")
            if not isinstance(about, list):
                raise KeptError(f"{path}:{i}: record without an 'about' list (rebuild the world; coverage < 1 needs it)")
            if not set(about) <= covered:
                dropped[lang] = dropped.get(lang, 0) + 1
                continue
        docs.append(document_text(rec))
    return docs


def world_documents(passages: str | Path, lang: str, *, seed: int, passes: dict[str, int] | None = None,
                    extra: Iterable[str | Path] = (), covered: set[str] | None = None,
                    dropped: dict[str, int] | None = None) -> Iterator[str]:
    """The world's passages in ``lang`` (plus the ``lang`` documents of the ``extra`` world text files), only
    those about ``covered`` entities when it is given (``dropped`` counts the others per language), shuffled,
    endlessly (each pass in a new order)."""
    path = Path(passages)
    dropped = {} if dropped is None else dropped
    docs = _covered_records(path, lang, covered, dropped)
    for other in extra:
        docs += _covered_records(Path(other), lang, covered, dropped)
    if not docs:
        raise KeptError(f"{path}: no passages in language {lang!r}" + (" about a covered entity" if covered else ""))
    rng = random.Random(f"{seed}:{lang}")
    while True:
        if passes is not None:
            passes[lang] = passes.get(lang, 0) + 1
        order = list(range(len(docs)))
        rng.shuffle(order)
        for i in order:
            yield docs[i]


def miracl_patterns(languages: list[str]) -> list[str]:
    """The MIRACL corpus repo's file patterns of ``languages``."""
    return [MIRACL_FILES.format(lang=lang) for lang in languages]


def miracl_local_files(root: str | Path, languages: list[str]) -> dict[str, list[str]]:
    """Per language, the sorted MIRACL files under ``root`` (laid out as the hub repo: what :func:`fetch_miracl`
    writes); a KeptError names the first language without any."""
    root = Path(root)
    files = {lang: sorted(str(p) for p in root.glob(MIRACL_FILES.format(lang=lang))) for lang in languages}
    missing = [lang for lang, found in files.items() if not found]
    if missing:
        raise KeptError(f"{root}: no MIRACL files {MIRACL_FILES.format(lang=missing[0])} (languages {missing})")
    return files


def fetch_miracl(*, output: str | Path, languages: list[str], repo: str = MIRACL_REPO, revision: str,
                 resolve: Any = None, download: Any = None) -> dict[str, Any]:
    """Download the MIRACL corpus files of ``languages`` at ``revision`` into ``output`` (the repo's layout,
    ``miracl-corpus-v1.0-<lang>/docs-*.jsonl.gz``), atomically, with ``SOURCE.json`` (repo, revision, resolved
    commit, files per language). The fetch stage runs it on the submitting host; ``prepare_corpus`` then reads the
    local files on a compute node. ``resolve`` / ``download``: see :func:`kept.source.fetch_snapshot`."""
    from kept.source import fetch_snapshot

    def describe(tmp: Path) -> dict[str, Any]:
        files = miracl_local_files(tmp, languages)
        return {"files": {lang: [str(Path(f).relative_to(tmp)) for f in fs] for lang, fs in files.items()}}

    return fetch_snapshot(repo=repo, revision=revision, output=output, allow_patterns=miracl_patterns(languages),
                          describe=describe, repo_type="dataset", resolve=resolve, download=download)


def miracl_documents(lang: str, *, seed: int, repo: str = MIRACL_REPO, revision: str | None = None,
                     data_files: list[str] | None = None, shuffle_buffer: int = 10_000,
                     passes: dict[str, int] | None = None) -> Iterator[str]:
    """MIRACL passages of ``lang`` streamed through ``datasets`` (hub files at ``revision``, or ``data_files``),
    shuffled with a seeded buffer, endlessly."""
    import datasets

    if data_files is None:
        rev = f"@{revision}" if revision else ""
        data_files = [f"hf://datasets/{repo}{rev}/{MIRACL_FILES.format(lang=lang)}"]
    missing = [f for f in data_files if "://" not in f and not Path(f).is_file()]
    if missing:
        raise KeptError(f"MIRACL {lang}: missing data file(s) {missing}")
    epoch = 0
    while True:
        if passes is not None:
            passes[lang] = passes.get(lang, 0) + 1
        try:
            stream = datasets.load_dataset("json", data_files=data_files, split="train", streaming=True)
            stream = stream.shuffle(seed=seed + epoch, buffer_size=shuffle_buffer)
            n = 0
            for rec in stream:
                if "text" not in rec:
                    raise KeptError(f"MIRACL {lang}: record without a 'text' field in {data_files}: {sorted(rec)}")
                n += 1
                yield document_text(rec)
        except (OSError, ValueError) as exc:  # datasets wraps download/parse errors in these
            raise KeptError(f"MIRACL {lang}: cannot read {data_files}: {exc}") from exc
        if n == 0:
            raise KeptError(f"MIRACL {lang}: no records in {data_files}")
        epoch += 1


# ---- packing ---------------------------------------------------------------------------------------------------
class ShardWriter:
    """Accumulates token ids and writes full (rows_per_shard, max_length) int32 shards."""

    def __init__(self, directory: Path, *, max_length: int, rows_per_shard: int) -> None:
        self.directory = directory
        self.max_length = max_length
        self.rows_per_shard = rows_per_shard
        self.pending: list[int] = []
        self.rows: list[np.ndarray] = []
        self.shards: list[str] = []
        self.num_sequences = 0
        self.padding = 0
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, ids: list[int]) -> None:
        self.pending.extend(ids)
        while len(self.pending) >= self.max_length:
            self.rows.append(np.asarray(self.pending[: self.max_length], dtype=np.int32))
            del self.pending[: self.max_length]
            if len(self.rows) == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        name = f"{len(self.shards):05d}.npy"
        np.save(self.directory / name, np.stack(self.rows), allow_pickle=False)
        self.shards.append(f"shards/{name}")
        self.num_sequences += len(self.rows)
        self.rows = []

    def close(self, *, pad_id: int) -> None:
        if self.pending:
            self.padding = self.max_length - len(self.pending)
            self.add([pad_id] * self.padding)
        self._flush()


def pack(
    *,
    documents: dict[str, Iterator[tuple[str, list[int]]]],
    budgets: dict[str, int],
    output: str | Path,
    max_length: int,
    eos_id: int,
    seed: int,
    rows_per_shard: int = 4096,
    manifest_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pack token streams to their budgets: ``documents[group]`` yields ``(language, token ids)``, ``budgets[group]``
    is the group's token count (EOS included). Groups are languages for the transfer corpus and domains for
    teacher pretraining. Writes ``output`` atomically and returns its manifest."""
    for g in budgets:
        if g not in documents:
            raise ConfigError(f"corpus: group {g!r} has a budget but no documents")
        if budgets[g] < 0:
            raise ConfigError(f"corpus: budget of {g!r} is negative")
    rng = random.Random(f"pack:{seed}")
    remaining = {g: int(b) for g, b in budgets.items() if b > 0}
    per_group = {g: 0 for g in budgets}
    per_lang: dict[str, int] = {}
    docs_per_lang: dict[str, int] = {}
    with atomic_dir(output) as tmp:
        writer = ShardWriter(tmp / "shards", max_length=max_length, rows_per_shard=rows_per_shard)
        while remaining:
            groups = sorted(remaining)
            g = rng.choices(groups, weights=[remaining[k] for k in groups])[0]
            lang, ids = next(documents[g])
            ids = list(ids[: remaining[g] - 1]) + [eos_id]
            writer.add(ids)
            remaining[g] -= len(ids)
            per_group[g] += len(ids)
            per_lang[lang] = per_lang.get(lang, 0) + len(ids)
            docs_per_lang[lang] = docs_per_lang.get(lang, 0) + 1
            if remaining[g] <= 0:
                del remaining[g]
        writer.close(pad_id=eos_id)
        manifest = {
            "max_length": max_length,
            "num_sequences": writer.num_sequences,
            "eos_id": eos_id,
            "tokens_per_language": dict(sorted(per_lang.items())),
            "tokens_per_group": dict(sorted(per_group.items())),
            "documents_per_language": dict(sorted(docs_per_lang.items())),
            "total_tokens": sum(per_group.values()),
            "padding_tokens": writer.padding,
            "shards": writer.shards,
            "seed": seed,
        }
        manifest.update(manifest_extra or {})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest


def tokenized(texts: Iterator[str], encode: Callable[[list[str]], list[list[int]]], lang: str,
              batch: int = 256) -> Iterator[tuple[str, list[int]]]:
    """``(lang, ids)`` for each text, encoding ``batch`` texts at a time."""
    while True:
        chunk = [t for _, t in zip(range(batch), texts)]
        if not chunk:
            return
        for ids in encode(chunk):
            if ids:
                yield lang, ids


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_corpus(cfg: CorpusConfig) -> dict[str, Any]:
    """Balance ``cfg.languages`` to ``cfg.token_budget`` and pack them to ``cfg.max_length`` (see module doc)."""
    from kept.world.tokenizer import load_sp

    tok_path = Path(cfg.tokenizer)
    tok_path = tok_path / "tokenizer.model" if tok_path.is_dir() else tok_path
    sp = load_sp(tok_path)
    eos = sp.eos_id()
    if eos < 0:
        raise KeptError(f"{tok_path}: the tokenizer has no EOS piece")
    passes: dict[str, int] = {}
    dropped: dict[str, int] = {}
    covered = None
    if cfg.coverage < 1.0:
        from kept.world.generator import covered_entities
        from kept.world.render import load_world

        world = load_world(cfg.world)
        covered = covered_entities(world, cfg.coverage)
    streams: dict[str, Iterator[tuple[str, list[int]]]] = {}
    for lang in cfg.languages:
        if cfg.source == "world":
            texts: Iterable[str] = world_documents(cfg.passages, lang, seed=cfg.seed, passes=passes,
                                                   extra=cfg.world_texts, covered=covered, dropped=dropped)
        else:
            files = (cfg.data_files or {}).get(lang) if cfg.data_files is not None else None
            if cfg.data_files is not None and not files:
                raise ConfigError(f"corpus: data_files has no entry for language {lang!r}")
            texts = miracl_documents(lang, seed=cfg.seed, repo=cfg.miracl_repo, revision=cfg.miracl_revision,
                                     data_files=files, shuffle_buffer=cfg.shuffle_buffer, passes=passes)
        streams[lang] = tokenized(iter(texts), sp.encode, lang)
    per = cfg.token_budget // len(cfg.languages)
    extra = {
        "source": cfg.source if cfg.source == "world" else f"{cfg.miracl_repo}@{cfg.miracl_revision or 'main'}",
        **({"world_texts": [Path(t).name for t in cfg.world_texts]} if cfg.world_texts else {}),
        "languages": list(cfg.languages),
        "token_budget": per * len(cfg.languages),
        "tokenizer_sha256": file_sha256(tok_path),
        "passes_per_language": passes,
    }
    if cfg.source == "world":
        extra["coverage"] = cfg.coverage
        if covered is not None:
            extra["uncovered_entities"] = sorted(set(world.entities) - covered)
            extra["documents_left_out_per_language"] = dropped  # filled as the streams are read (JSON sorts keys)
    manifest = pack(documents=streams, budgets={lang: per for lang in cfg.languages}, output=cfg.output,
                    max_length=cfg.max_length, eos_id=eos, seed=cfg.seed, rows_per_shard=cfg.rows_per_shard,
                    manifest_extra=extra)
    return manifest


def cli(argv: list[str]) -> int:
    """``kept prepare-corpus``: pack world passages or MIRACL into a corpus directory."""
    p = argparse.ArgumentParser(prog="kept prepare-corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True)
    p.add_argument("--tokenizer", required=True, help="tokenizer.model or a directory holding one")
    p.add_argument("--source", choices=["world", "miracl"], default="world")
    p.add_argument("--passages", help="world text/passages.jsonl (source world)")
    p.add_argument("--languages", nargs="+", default=["ko", "en", "zh", "ja"])
    p.add_argument("--token-budget", type=int, default=400_000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--miracl-revision")
    p.add_argument("--data-file", action="append", default=[], metavar="LANG=PATH",
                   help="local MIRACL-format file for a language (repeatable); replaces the hub files")
    a = p.parse_args(argv)
    data_files: dict[str, list[str]] | None = None
    if a.data_file:
        data_files = {}
        for item in a.data_file:
            lang, _, path = item.partition("=")
            if not path:
                raise ConfigError(f"--data-file {item!r}: expected LANG=PATH")
            data_files.setdefault(lang, []).append(path)
    m = prepare_corpus(CorpusConfig(output=a.output, tokenizer=a.tokenizer, source=a.source,
                                    languages=a.languages, token_budget=a.token_budget, max_length=a.max_length,
                                    seed=a.seed, passages=a.passages, miracl_revision=a.miracl_revision,
                                    data_files=data_files))
    print(json.dumps({k: m[k] for k in ("num_sequences", "total_tokens", "tokens_per_language")}))
    return 0
