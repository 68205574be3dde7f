"""The HF tokenizer rebuilt from a SentencePiece proto gives SentencePiece's ids on Korean, Chinese, Japanese,
English and code, for several differently-trained SentencePiece models (BPE/unigram, byte fallback on/off,
identity/nmt_nfkc normalisation, dummy prefix on/off, extra-whitespace removal, user-defined symbols)."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm
from tiny_orion import SAMPLES, make_orion_checkpoint, train_sp, training_lines
from transformers import AutoTokenizer

from kept.tokenizer import build_tokenizer, load_hf_tokenizer

SP_SETTINGS = {
    "bpe_llama_like": dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                           remove_extra_whitespaces=False, split_digits=True),
    "bpe_nfkc": dict(model_type="bpe", normalization_rule_name="nmt_nfkc"),
    "unigram_nfkc": dict(model_type="unigram", normalization_rule_name="nmt_nfkc"),
    "unigram_bytes_nodummy": dict(model_type="unigram", byte_fallback=True, add_dummy_prefix=False,
                                  normalization_rule_name="identity"),
    "bpe_user_symbols": dict(model_type="bpe", byte_fallback=True, user_defined_symbols=["<tool>", "@@"],
                             remove_extra_whitespaces=True),
}
EDGE = ["", " ", "   ", "a", "  a  b  ", "12345 67890", "emoji 😀 and rare 龘 chars ŉ", "tab\there\nnewline\n\n",
        "ＡＢＣ full-width １２３", "call <tool> then @@ end", "trailing spaces   ", "\u3000全角スペース"]


@pytest.fixture(scope="module", params=sorted(SP_SETTINGS))
def sp_model(request, tmp_path_factory):
    return train_sp(tmp_path_factory.mktemp("sp") / f"{request.param}.model", **SP_SETTINGS[request.param])


def _fuzz(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    chars = sorted(set("".join(training_lines(50)))) + list("😀龘ŉ\t\n  ０１２")
    return ["".join(rng.choice(chars) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_same_ids_as_sentencepiece(sp_model):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tok = build_tokenizer(sp_model)
    texts = [t for lang in SAMPLES.values() for t in lang] + EDGE + ["\n".join(training_lines(20))] + _fuzz(300)
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), repr(text)


def test_text_starting_with_a_user_symbol(tmp_path):
    """The one documented difference: SentencePiece emits a lone "▁" before a user-defined symbol that opens
    the text; ours does not. Everything after it is identical."""
    path = train_sp(tmp_path / "ud.model", **SP_SETTINGS["bpe_user_symbols"])
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = build_tokenizer(path)
    for text in ["<tool> first", "  @@x y", "@@"]:
        want = sp.encode(text)
        assert sp.id_to_piece(want[0]) == "▁"
        assert tok.encode(text, add_special_tokens=False).ids == want[1:]
    # the added-token patterns are rebuilt when tokenizer.json is loaded again: still SentencePiece's ids
    from tokenizers import Tokenizer

    reloaded = Tokenizer.from_str(tok.to_str())
    for text in ["call <tool> then @@ end", "x<tool>y", "a @@b <tool>"]:
        assert reloaded.encode(text, add_special_tokens=False).ids == sp.encode(text)


def test_decodes_like_sentencepiece(sp_model):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tok = build_tokenizer(sp_model)
    for lang, texts in SAMPLES.items():
        for text in texts:
            ids = sp.encode(text)
            assert tok.decode(ids, skip_special_tokens=False) == sp.decode(ids), (lang, text)


def test_orion_dir_and_converted_dir_tokenize_alike(tmp_path):
    """load_hf_tokenizer on an Orion dir (tokenizer.model only) and AutoTokenizer on the converted dir agree
    with SentencePiece, and add no BOS/EOS (Orion: add_bos_token false)."""
    from kept.convert import convert_checkpoint

    sp_path = train_sp(tmp_path / "sp.model", **SP_SETTINGS["bpe_llama_like"])
    src = make_orion_checkpoint(tmp_path / "orion", sp_model=sp_path)
    out = tmp_path / "out"
    convert_checkpoint(source=src, output=out, norm="paper", fidelity_tokens=0)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    orion_tok = load_hf_tokenizer(src)
    converted = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    assert load_hf_tokenizer(out).get_vocab() == converted.get_vocab()
    for text in [t for lang in SAMPLES.values() for t in lang]:
        want = sp.encode(text)
        assert orion_tok(text)["input_ids"] == want
        assert converted(text)["input_ids"] == want
        assert converted.encode(text) == want
        assert converted.decode(want) == sp.decode(want)
    assert (converted.bos_token_id, converted.eos_token_id, converted.unk_token_id) == (1, 2, 0)
    assert converted.pad_token == "<unk>"
    # special-token strings become their ids, as in any HF tokenizer
    assert converted.encode("<s>안녕</s>") == [1, *sp.encode("안녕"), 2]


@pytest.mark.parametrize("setting,prefix", [("unigram_bytes_nodummy", False), ("bpe_llama_like", True)])
def test_tokenizer_config_tells_llama_cpp_the_dummy_prefix(tmp_path, setting, prefix):
    """llama.cpp's GGUF converter reads add_prefix_space from tokenizer_config.json and libllama otherwise adds a
    "▁" at the start and after every special token (bench.run llamacpp: every chat prompt differed); transformers
    ignores the key, so its ids stay SentencePiece's."""
    import json

    from kept.tokenizer import write_tokenizer

    sp_path = train_sp(tmp_path / "sp.model", **SP_SETTINGS[setting])
    out = tmp_path / "out"
    out.mkdir()
    write_tokenizer(model_file=sp_path, output=out, model_max_length=64)
    assert json.loads((out / "tokenizer_config.json").read_text())["add_prefix_space"] is prefix
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    for text in [*EDGE, *SAMPLES["en"], *SAMPLES["ko"]]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
