"""The packed transfer corpus: the MIRACL path offline (local files in MIRACL's record format), the world path,
language balance, packing, EOS separation, determinism, bad inputs."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from kept.corpus import CorpusConfig, document_text, prepare_corpus
from kept.errors import ConfigError, KeptError
from kept.world.tokenizer import load_sp, train_tokenizer

LANGS = ("ko", "en", "zh", "ja")
WORDS = {
    "en": ["river", "town", "history", "the", "old", "bridge", "was", "built", "in", "north"],
    "ko": ["강", "마을", "역사", "오래된", "다리", "북쪽", "지어졌다", "있다"],
    "zh": ["河", "城镇", "历史", "古老", "桥", "北部", "建成", "位于"],
    "ja": ["川", "町", "歴史", "古い", "橋", "北部", "建てられた", "ある"],
}


def _miracl_records(lang: str, n: int, rng: random.Random) -> list[dict[str, str]]:
    sep = " " if lang in ("en", "ko") else ""
    out = []
    for i in range(n):
        words = [rng.choice(WORDS[lang]) for _ in range(rng.randint(5, 60))]
        out.append({"docid": f"{i // 3}#{i % 3}", "title": f"{lang}-title-{i // 3}", "text": sep.join(words)})
    return out


@pytest.fixture(scope="module")
def miracl(tmp_path_factory):
    """Small local files in MIRACL's record format (docid, title, text): one gzipped, like the hub's, and a
    tokenizer trained on them."""
    root = tmp_path_factory.mktemp("miracl")
    rng = random.Random(0)
    files, records = {}, {}
    for lang in LANGS:
        records[lang] = _miracl_records(lang, 120, rng)
        path = root / (f"docs-{lang}.jsonl" + (".gz" if lang == "ko" else ""))
        opener = gzip.open if lang == "ko" else open
        with opener(path, "wt", encoding="utf-8") as fh:
            for rec in records[lang]:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        files[lang] = [str(path)]
    text = root / "text.jsonl"
    with open(text, "w", encoding="utf-8") as fh:
        for lang in LANGS:
            for rec in records[lang]:
                fh.write(json.dumps({"text": document_text(rec)}, ensure_ascii=False) + "\n")
    train_tokenizer(text_files=[text], output=root / "tokenizer.model", vocab_size=400)
    return {"root": root, "files": files, "records": records, "tokenizer": str(root / "tokenizer.model")}


def _load(out: Path) -> tuple[dict, np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = np.concatenate([np.load(out / s) for s in manifest["shards"]])
    return manifest, rows


def _config(miracl, out: Path, **kw) -> CorpusConfig:
    settings = dict(output=str(out), tokenizer=miracl["tokenizer"], source="miracl", languages=list(LANGS),
                    token_budget=8000, max_length=128, seed=5, data_files=miracl["files"], rows_per_shard=16)
    settings.update(kw)
    return CorpusConfig(**settings)


def test_miracl_path_balances_languages_packs_and_separates_with_eos(miracl, tmp_path):
    out = tmp_path / "corpus"
    manifest = prepare_corpus(_config(miracl, out))
    m, rows = _load(out)
    assert m == manifest
    per = 8000 // 4
    for lang in LANGS:
        assert abs(m["tokens_per_language"][lang] - per) <= 0.01 * per, (lang, m["tokens_per_language"])
    assert rows.dtype == np.int32 and rows.ndim == 2 and rows.shape[1] == 128  # no sequence over max_length
    assert len(m["shards"]) > 1 and m["num_sequences"] == len(rows)
    assert m["total_tokens"] + m["padding_tokens"] == rows.size
    # the EOS-separated stream is a sequence of whole MIRACL documents (the last one cut at its budget)
    sp = load_sp(miracl["tokenizer"])
    stream = rows.reshape(-1)[: m["total_tokens"]].tolist()
    assert stream[-1] == m["eos_id"] == 2
    pieces, cur = [], []
    for t in stream:
        if t == m["eos_id"]:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    assert sum(m["documents_per_language"].values()) == len(pieces)
    docs = {document_text(r) for lang in LANGS for r in miracl["records"][lang]}
    whole = [p for p in pieces if sp.decode(p) in docs]
    assert len(whole) >= len(pieces) - len(LANGS)  # at most one truncated document per language
    for p in pieces:
        assert any(d.startswith(sp.decode(p)) for d in docs)
    # languages interleave rather than follow one another
    head = sp.decode(rows[: max(1, len(rows) // 4)].reshape(-1).tolist())
    assert all(f"{lang}-title" in head for lang in LANGS)


def test_short_sources_are_read_again_and_budget_holds(miracl, tmp_path):
    m = prepare_corpus(_config(miracl, tmp_path / "big", token_budget=60000))
    assert all(m["passes_per_language"][lang] >= 2 for lang in LANGS)
    for lang in LANGS:
        assert abs(m["tokens_per_language"][lang] - 15000) <= 150


def test_same_seed_gives_byte_identical_corpus(miracl, tmp_path):
    def digest(out: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}

    prepare_corpus(_config(miracl, tmp_path / "a"))
    prepare_corpus(_config(miracl, tmp_path / "b"))
    prepare_corpus(_config(miracl, tmp_path / "c", seed=6))
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a["00000.npy"] != c["00000.npy"]


def test_world_path_packs_world_passages(tmp_path):
    from kept.world.generator import WorldSpec
    from kept.world.render import DOMAINS, write_world

    write_world(spec=WorldSpec(seed=2, n_people=10, n_cities=4, passages_per_entity=2, quiz_docs=20, dialogues=10,
                               programs=10, long_docs=1, long_doc_chars=500), output=tmp_path / "world")
    train_tokenizer(text_files=[tmp_path / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                    output=tmp_path / "tokenizer.model", vocab_size=1000)
    m = prepare_corpus(CorpusConfig(output=str(tmp_path / "corpus"), tokenizer=str(tmp_path / "tokenizer.model"),
                                    source="world", passages=str(tmp_path / "world" / "text" / "passages.jsonl"),
                                    token_budget=4000, max_length=64, seed=1))
    assert m["source"] == "world" and set(m["tokens_per_language"]) == set(LANGS)
    assert all(abs(v - 1000) <= 10 for v in m["tokens_per_language"].values())
    _, rows = _load(tmp_path / "corpus")
    sp = load_sp(tmp_path / "tokenizer.model")
    assert "Question" not in sp.decode(rows.reshape(-1).tolist())  # passages only: no quiz, no code
    assert "print(" not in sp.decode(rows.reshape(-1).tolist())
    # the corpus-breadth ablation: the same budget, other world domains join each language's pool
    text = tmp_path / "world" / "text"
    m = prepare_corpus(CorpusConfig(output=str(tmp_path / "broad"), tokenizer=str(tmp_path / "tokenizer.model"),
                                    source="world", passages=str(text / "passages.jsonl"), token_budget=4000,
                                    max_length=64, seed=1, world_texts=[str(text / "quiz.jsonl"),
                                                                        str(text / "dialogue.jsonl")]))
    assert m["world_texts"] == ["quiz.jsonl", "dialogue.jsonl"] and m["total_tokens"] == 4000
    _, rows = _load(tmp_path / "broad")
    decoded = sp.decode(rows.reshape(-1).tolist())
    assert "Question:" in decoded and "print(" not in decoded  # quiz joined; code was not asked for
    with pytest.raises(ConfigError, match="world_texts"):
        CorpusConfig(output="o", tokenizer="t", source="miracl", world_texts=[str(text / "quiz.jsonl")])


def test_bad_inputs_fail_clearly_and_leave_nothing(miracl, tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(KeptError, match="missing data file"):
        prepare_corpus(_config(miracl, out, data_files={**miracl["files"], "ja": [str(tmp_path / "nope.jsonl")]}))
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"docid": "1", "title": "t"}\n')
    with pytest.raises(KeptError, match="text"):
        prepare_corpus(_config(miracl, out, data_files={**miracl["files"], "en": [str(broken)]}))
    assert not out.exists()
    with pytest.raises(ConfigError, match="data_files has no entry"):
        prepare_corpus(_config(miracl, out, data_files={"en": miracl["files"]["en"]}))
    with pytest.raises(ConfigError, match="source"):
        CorpusConfig(output="o", tokenizer="t", source="web")
    with pytest.raises(ConfigError, match="passages"):
        CorpusConfig(output="o", tokenizer="t", source="world")
    with pytest.raises(KeptError, match="SentencePiece"):
        prepare_corpus(_config(miracl, out, tokenizer=str(tmp_path / "missing.model")))
