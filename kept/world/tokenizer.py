"""Train the toy world's SentencePiece tokenizer (BPE with byte fallback, ids laid out like Orion's).

Choices, all Orion-like: ``<unk>``=0, ``<s>``=1, ``</s>``=2 (pad is ``<unk>``, no separate pad piece); byte
fallback, so any text encodes; ``split_digits`` so numbers are digit sequences; identity normalisation and no
extra-whitespace removal, so newlines and code indentation survive; no dummy prefix, so a word at the start of a
text and after a newline encode the same way and ``decode(encode(text)) == text``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from kept.atomic import atomic_file
from kept.errors import ConfigError, KeptError

_SPECIALS = re.compile(r"</?s>")
_MAX_CHARS = 1000  # SentencePiece drops sentences over max_sentence_length bytes; chunk at paragraphs


def _chunks(text: str) -> Iterator[str]:
    """Pieces of ``text`` of at most ~_MAX_CHARS characters, split at paragraph (then line) boundaries."""
    buf = ""
    for para in text.split("\n\n"):
        while len(para) > _MAX_CHARS:
            cut = para.rfind("\n", 0, _MAX_CHARS)
            cut = cut if cut > 0 else _MAX_CHARS
            yield para[:cut]
            para = para[cut:]
        if buf and len(buf) + len(para) + 2 > _MAX_CHARS:
            yield buf
            buf = ""
        buf = f"{buf}\n\n{para}" if buf else para
    if buf:
        yield buf


def training_sentences(files: Iterable[str | Path]) -> Iterator[str]:
    """Chunks of every document's text in ``files`` (JSONL with a ``text`` field), chat specials removed."""
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise KeptError(f"{path}: missing text file for tokenizer training")
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError) as exc:
                    raise KeptError(f"{path}:{n}: expected a JSON object with a 'text' field ({exc})") from exc
                yield from _chunks(_SPECIALS.sub("", text))


def train_tokenizer(*, text_files: list[str | Path], output: str | Path, vocab_size: int = 3000) -> Path:
    """Train a BPE SentencePiece model on the documents of ``text_files`` and write it to ``output``."""
    if vocab_size < 300:
        raise ConfigError(f"vocab_size {vocab_size} is too small (byte fallback alone needs 259 pieces)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(text_files),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            max_sentence_length=8 * _MAX_CHARS,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,  # byte-identical models across runs
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise KeptError(f"SentencePiece training for {output} failed: {exc}") from exc
    with atomic_file(output, "wb") as fh:
        fh.write(model.getvalue())
    return Path(output)


def load_sp(path: str | Path) -> spm.SentencePieceProcessor:
    """A SentencePiece processor for ``path`` (a ``tokenizer.model`` file or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise KeptError(f"{path}: missing SentencePiece model")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise KeptError(f"{path}: not a SentencePiece model ({exc})") from exc
