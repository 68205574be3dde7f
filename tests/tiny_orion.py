"""Builders for the conversion tests: tiny SentencePiece models, tiny Orion checkpoints in the hub's on-disk
format (pickled .bin shards + index + tokenizer.model), and tiny packed calibration corpora."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from kept.orion import new_orion_model, save_orion_checkpoint

KO = ["안녕하세요, 만나서 반갑습니다.", "오늘 날씨가 정말 좋네요!", "한국어 문장을 토큰화합니다.",
      "서울은 대한민국의 수도입니다.", "저는 학생이고 컴퓨터 과학을 공부해요."]
ZH = ["你好，世界。", "今天天气很好，我们去公园吧。", "机器学习是人工智能的一个分支。", "北京是中国的首都。",
      "我喜欢读书和写代码。"]
JA = ["こんにちは、世界。", "今日はとても良い天気ですね。", "東京は日本の首都です。", "私はプログラミングが好きです。",
      "カタカナとひらがなを混ぜます。"]
EN = ["Hello, world!", "The quick brown fox jumps over the lazy dog.", "Large language models are trained on text.",
      "It costs $12.50 (about 15,000 won) in 2024.", "Leading and   repeated   spaces."]
CODE = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n\tprint(i ** 2)",
        "x = {'key': [1, 2, 3]}  # comment", "if (a != b && c >= 0) { return -1; }",
        "import numpy as np\nnp.zeros((3, 4))"]
SAMPLES = {"ko": KO, "zh": ZH, "ja": JA, "en": EN, "code": CODE}


def training_lines(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = KO + ZH + JA + EN + CODE
    return [" ".join(rng.sample(pool, 3)).replace("\n", " ") for _ in range(n)]


def train_sp(path: Path, *, model_type: str = "bpe", vocab_size: int | None = None, **kwargs) -> Path:
    """Train a SentencePiece model on the multilingual lines; Orion-like specials (<unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    if vocab_size is None:
        vocab_size = 700 if model_type == "bpe" else 300 + 256 * bool(kwargs.get("byte_fallback"))
    coverage = 0.995 if model_type == "bpe" else 0.98
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=buf, model_type=model_type, vocab_size=vocab_size,
        character_coverage=coverage, hard_vocab_limit=model_type == "bpe", minloglevel=2, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, **kwargs,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def sp_size(model: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()


def tiny_config(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, inter: int = 96,
                max_pos: int = 128, rope_theta: float = 10000.0) -> dict:
    return {
        "model_type": "orion", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
        "max_position_embeddings": max_pos, "rope_theta": rope_theta, "rms_norm_eps": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


def tiny_orion_model(cfg: dict, *, seed: int = 0, beta_scale: float = 0.5, emb_mean: float = 0.5):
    """A random Orion-computation model with large LayerNorm beta, gamma != 1 and non-zero-mean embeddings."""
    torch.manual_seed(seed)
    model = new_orion_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.startswith("model.norm"):
                if name.endswith(".weight"):
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                else:
                    p.copy_(beta_scale * torch.randn_like(p))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * torch.randn_like(p) + emb_mean * (1.0 + torch.rand(p.shape[0], 1)))
            else:
                p.normal_(0.0, 0.08)
    return model.eval()


def make_orion_checkpoint(out: Path, *, sp_model: Path, seed: int = 0, beta_scale: float = 0.5,
                          emb_mean: float = 0.5, chat: bool = False, num_shards: int = 2,
                          dtype: torch.dtype = torch.float32, **cfg_kwargs) -> Path:
    cfg = tiny_config(sp_size(sp_model), **cfg_kwargs)
    model = tiny_orion_model(cfg, seed=seed, beta_scale=beta_scale, emb_mean=emb_mean).to(dtype)
    return save_orion_checkpoint(model, out, tokenizer_model=sp_model, num_shards=num_shards, chat=chat)


def make_corpus(out: Path, *, sp_model: Path, n_seq: int = 8, max_length: int = 32, seed: int = 0) -> Path:
    """A packed corpus (docs/architecture.md format) of the multilingual lines, documents joined with EOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    stream: list[int] = []
    for line in training_lines(n=n_seq * 4, seed=seed):
        stream += sp.encode(line) + [sp.eos_id()]
    need = n_seq * max_length
    while len(stream) < need:
        stream += stream
    arr = np.asarray(stream[:need], dtype=np.int32).reshape(n_seq, max_length)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    np.save(out / "shards" / "00000.npy", arr)
    manifest = {"max_length": max_length, "num_sequences": n_seq, "eos_id": sp.eos_id(),
                "tokens_per_language": {"mixed": need}, "total_tokens": need, "shards": ["shards/00000.npy"],
                "source": "tests", "seed": seed}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
