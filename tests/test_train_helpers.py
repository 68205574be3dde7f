"""Tiny fixtures for the training tests (a SentencePiece model, a random Orion teacher with non-trivial norms, a
packed corpus), plus tests of the corpus reader and the data order they rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

VOCAB = 96


def make_tokenizer(path: Path, vocab: int = VOCAB) -> Path:
    """A real SentencePiece model of exactly ``vocab`` pieces (trained on generated text)."""
    import sentencepiece as spm

    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(300)]
    text = path.parent / "sp_text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(400)))
    prefix = path.parent / "sp"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=vocab, model_type="bpe", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=True, minloglevel=2,
    )
    Path(f"{prefix}.model").rename(path)
    return path


def orion_config(vocab: int = VOCAB, hidden: int = 32, layers: int = 2, heads: int = 4) -> dict:
    return {
        "model_type": "orion", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "initializer_range": 0.2,  # large weights: the norms matter, KL of OPM ~0.5
    }


def make_orion(out: Path, tokenizer: Path, *, seed: int = 0, final_bias: bool = False, chat: bool = False,
               **cfg_kw) -> Path:
    """A random Orion checkpoint whose LayerNorms matter: gamma ~ 1 + 0.3 N, beta ~ 0.2 N, and a shared offset in
    every embedding row so the residual stream has a clear mean (the regime where OPM is approximate).
    ``final_bias=False`` zeroes the final norm's beta, the one term stock Llama cannot hold."""
    from kept.orion import new_orion_model, save_orion_checkpoint

    torch.manual_seed(seed)
    model = new_orion_model(orion_config(**cfg_kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.startswith("model.norm"):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        if not final_bias:
            model.model.norm.bias.zero_()
        emb = model.model.embed_tokens.weight
        emb.add_(0.05 * torch.randn(emb.shape[1], generator=g))
    return save_orion_checkpoint(model, out, tokenizer_model=tokenizer, num_shards=2, chat=chat)


def make_corpus(out: Path, *, n: int = 24, length: int = 16, vocab: int = VOCAB, seed: int = 0,
                shards: int = 2) -> Path:
    """A packed corpus dir in the contract format (manifest.json + int32 shards)."""
    rng = np.random.default_rng(seed)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    data = rng.integers(3, vocab, size=(n, length)).astype(np.int32)
    # a learnable pattern: every other token repeats its predecessor
    data[:, 1::2] = data[:, 0::2]
    names = []
    for i, part in enumerate(np.array_split(data, shards)):
        name = f"shards/{i:05d}.npy"
        np.save(out / name, part)
        names.append(name)
    manifest = {"max_length": length, "num_sequences": n, "eos_id": 2, "tokens_per_language": {"xx": n * length},
                "total_tokens": n * length, "shards": names, "source": "test", "seed": seed}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """tokenizer.model, a teacher (Orion), its converted students (paper / exact), a corpus."""
    from kept.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("train_world")
    tok = make_tokenizer(root / "tokenizer.model")
    teacher = make_orion(root / "teacher", tok)
    corpus = make_corpus(root / "corpus")
    students = {}
    for norm in ("paper", "exact"):
        students[norm] = root / f"init-{norm}"
        convert_checkpoint(source=teacher, output=students[norm], norm=norm, calibration=corpus)
    return {"root": root, "tokenizer": tok, "teacher": teacher, "corpus": corpus, "students": students}


# ---------------------------------------------------------------------------------------------------------------


def test_corpus_reader_roundtrip(tmp_path):
    from kept.train.data import PackedCorpus

    corpus = make_corpus(tmp_path / "c", n=10, length=8, shards=3)
    reader = PackedCorpus(corpus)
    assert len(reader) == 10
    full = np.concatenate([np.load(corpus / f"shards/{i:05d}.npy") for i in range(3)])
    got = reader.get(np.array([9, 0, 4, 3]), length=6).numpy()
    np.testing.assert_array_equal(got, full[[9, 0, 4, 3], :6])


def test_corpus_reader_rejects_bad_shard(tmp_path):
    from kept.errors import KeptError
    from kept.train.data import PackedCorpus

    corpus = make_corpus(tmp_path / "c", n=4, length=8, shards=1)
    np.save(corpus / "shards/00000.npy", np.zeros((4, 7), dtype=np.int32))
    with pytest.raises(KeptError, match="00000.npy"):
        PackedCorpus(corpus)


def test_data_order_depends_on_seed_and_step_only():
    from kept.train.data import BatchSchedule

    class _Fake:
        def __len__(self):
            return 10

    one = BatchSchedule(_Fake(), seed=3, batch_size=2, grad_accum=2, world_size=1)
    two = [BatchSchedule(_Fake(), seed=3, batch_size=1, grad_accum=2, world_size=2, rank=r) for r in (0, 1)]
    for step in range(7):  # crosses epochs (20 samples per 5 steps... 4 per step, 10 per epoch)
        single = np.concatenate([one.indices(step, m) for m in range(2)])
        split = np.concatenate([two[r].indices(step, m) for m in range(2) for r in range(2)])
        assert sorted(single) == sorted(split)
    epoch0 = np.concatenate([one.indices(s, m) for s in range(3) for m in range(2)])[:10]
    assert sorted(epoch0) == list(range(10))  # each epoch is a permutation
    other = BatchSchedule(_Fake(), seed=4, batch_size=2, grad_accum=2)
    assert not np.array_equal(one.indices(0, 0), other.indices(0, 0)) or not np.array_equal(
        one.indices(1, 0), other.indices(1, 0))
