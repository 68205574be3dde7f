"""SentencePiece -> Hugging Face tokenizer, with stock classes only.

Orion ships a SentencePiece ``tokenizer.model`` and a remote-code ``OrionTokenizer``. We rebuild the tokenizer
with the ``tokenizers`` library from the model proto itself: the BPE or unigram pieces and scores, and the
normalizer exactly as the proto's ``normalizer_spec`` describes it (precompiled character map,
``add_dummy_prefix``, ``remove_extra_whitespaces``, ``escape_whitespaces``) and ``trainer_spec`` (model type,
``byte_fallback``, special ids). No setting is assumed from Llama's defaults, so the ids equal SentencePiece's
on any text (special-token strings in the text become their ids, as in every HF tokenizer; the one known
exception, a text that starts with a user-defined symbol, is described in :func:`build_tokenizer`).

Orion's tokenizer adds no BOS/EOS (``add_bos_token: false``, ``add_eos_token: false``); ours neither.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kept.errors import CheckpointError

SPIECE = "▁"  # U+2581, SentencePiece's whitespace symbol

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2


def load_sp_proto(path: str | Path) -> Any:
    """Parse a SentencePiece ``.model`` file into its ModelProto."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing SentencePiece tokenizer model")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError and others
        raise CheckpointError(f"{path}: not a SentencePiece model ({type(exc).__name__}: {exc})") from exc
    if not proto.pieces:
        raise CheckpointError(f"{path}: SentencePiece model has no pieces")
    return proto


def _bpe_merges(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's encoder, which repeatedly joins the adjacent pair whose
    concatenation is the highest-scoring piece: a merge for every split of every piece into two pieces,
    ranked by the joined piece's score (ties: the piece's id, then the split's left length)."""
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, score, pid in pieces:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, pid, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(model_file: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` that reproduces the SentencePiece model's ids and decoding."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    path = Path(model_file)
    proto = load_sp_proto(path)
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    if ts.treat_whitespace_as_suffix:
        raise CheckpointError(f"{path}: treat_whitespace_as_suffix=true is not supported")
    if ns.normalization_rule_tsv:
        raise CheckpointError(f"{path}: custom normalization_rule_tsv is not supported")

    entries = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk_ids = [i for i, (_, _, t) in enumerate(entries) if t == UNKNOWN]
    if len(unk_ids) != 1:
        raise CheckpointError(f"{path}: expected exactly one <unk> piece, found {len(unk_ids)}")
    unk_id = unk_ids[0]

    if ts.model_type == BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(entries)}
        mergeable = {piece: i for i, (piece, _, t) in enumerate(entries) if t in (NORMAL, USER_DEFINED)}
        normal = [(piece, score, i) for i, (piece, score, t) in enumerate(entries) if t == NORMAL]
        model = models.BPE(
            vocab=vocab,
            merges=_bpe_merges(normal, mergeable),
            unk_token=entries[unk_id][0],
            fuse_unk=True,  # SentencePiece BPE emits one <unk> for a run of unknown characters
            byte_fallback=bool(ts.byte_fallback),
        )
    elif ts.model_type == UNIGRAM:
        model = models.Unigram(
            [(piece, float(score)) for piece, score, _ in entries], unk_id=unk_id, byte_fallback=bool(ts.byte_fallback)
        )
    else:
        raise CheckpointError(f"{path}: SentencePiece model type {ts.model_type} is not supported (BPE or unigram)")
    tok = Tokenizer(model)

    # Normalizer, in SentencePiece's order: character map; drop leading, trailing and repeated spaces;
    # dummy "▁" prefix; spaces -> "▁".
    steps: list[Any] = []
    if ns.precompiled_charsmap:
        steps.append(normalizers.Precompiled(bytes(ns.precompiled_charsmap)))
    if ns.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +"), ""),
            normalizers.Replace(Regex(r" +\z"), ""),
            normalizers.Replace(Regex(r" {2,}"), " "),
        ]
    user = [p for p, _, t in entries if t == USER_DEFINED]
    if ns.add_dummy_prefix:
        if user:
            # SentencePiece matches user-defined symbols inside the normalised text, so as HF added tokens they
            # are "normalized" tokens, whose own content goes through this normalizer too. A plain Prepend("▁")
            # would make that content "▁<sym>"; this prefix skips strings that start with a user symbol (or are
            # empty). One difference remains: a text whose normalised form *starts* with a user-defined symbol
            # lacks SentencePiece's lone leading "▁" token.
            alts = "|".join(re.escape(u) for u in sorted(user, key=len, reverse=True))
            steps.append(normalizers.Replace(Regex(rf"\A(?!{alts}|\z)"), SPIECE))
        else:
            steps.append(normalizers.Prepend(SPIECE))
    if ns.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE))
    if steps:
        tok.normalizer = normalizers.Sequence(steps)

    dec: list[Any] = [decoders.Replace(SPIECE, " ")]
    if ts.unk_surface and entries[unk_id][0] != ts.unk_surface:
        dec.insert(0, decoders.Replace(entries[unk_id][0], ts.unk_surface))  # SentencePiece prints <unk> as " ⁇ "
    if ts.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)

    # Control pieces (<s>, </s>, ...) and <unk> are special tokens; user-defined symbols are matched whole,
    # before the model, as SentencePiece does.
    specials = [AddedToken(p, special=True, normalized=False) for p, _, t in entries if t in (CONTROL, UNKNOWN)]
    tok.add_special_tokens(specials)
    if user:
        tok.add_tokens([AddedToken(p, special=False, normalized=True) for p in user])
    return tok


def special_tokens(proto: Any) -> dict[str, str]:
    """bos/eos/unk/pad strings of a SentencePiece model (pad = <unk> when the model has no pad, as Orion)."""
    ts = proto.trainer_spec
    n = len(proto.pieces)

    def piece(i: int) -> str | None:
        return proto.pieces[i].piece if 0 <= i < n else None

    unk = piece(ts.unk_id)
    return {
        "bos_token": piece(ts.bos_id),
        "eos_token": piece(ts.eos_id),
        "unk_token": unk,
        "pad_token": piece(ts.pad_id) or unk,
    }


def hf_tokenizer_from_sp(
    model_file: str | Path, *, model_max_length: int | None = None, chat_template: str | None = None
) -> Any:
    """A stock ``PreTrainedTokenizerFast`` over :func:`build_tokenizer`; adds no BOS/EOS."""
    from transformers import PreTrainedTokenizerFast

    proto = load_sp_proto(model_file)
    kwargs: dict[str, Any] = {k: v for k, v in special_tokens(proto).items() if v is not None}
    if model_max_length:
        kwargs["model_max_length"] = model_max_length
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(model_file), **kwargs)
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def load_hf_tokenizer(directory: str | Path) -> Any:
    """The Hugging Face tokenizer of an Orion directory (only ``tokenizer.model``) or of a converted directory
    (``tokenizer.json``); same ids as the SentencePiece model on any text. Orion chat directories get the Orion
    chat template."""
    directory = Path(directory)
    tok_cfg = _json(directory / "tokenizer_config.json")
    if (directory / "tokenizer.json").is_file() and tok_cfg.get("tokenizer_class") != "OrionTokenizer":
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        if tok_cfg.get("tokenizer_class") == "PreTrainedTokenizerFast":  # AutoTokenizer of transformers 5 would pick
            return PreTrainedTokenizerFast.from_pretrained(str(directory))  # config.json's family class (Qwen2's)
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    from kept.chat import ORION_TEMPLATE

    max_len = tok_cfg.get("model_max_length") or _json(directory / "config.json").get("max_position_embeddings")
    template = ORION_TEMPLATE if tok_cfg.get("chat_format") == "orion" else None
    return hf_tokenizer_from_sp(
        directory / "tokenizer.model",
        model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else None,
        chat_template=template,
    )


def write_tokenizer(
    *, model_file: str | Path, output: str | Path, model_max_length: int, chat_template: str | None = None,
    source_config: dict[str, Any] | None = None,
) -> None:
    """Write a converted model's tokenizer files: ``tokenizer.json`` (for the stock ``PreTrainedTokenizerFast``),
    the original ``tokenizer.model``, ``tokenizer_config.json`` (``add_bos_token``/``add_eos_token`` false, as
    Orion; ``add_prefix_space`` = the model's dummy prefix, for llama.cpp's converter; with ``chat_template`` the
    Jinja chat template, where transformers 4.x and 5.x both read it) and
    ``special_tokens_map.json``. Written with the ``tokenizers`` library alone (importing transformers would
    cost the converter seconds and memory); the tests load the result with ``AutoTokenizer``."""
    import shutil

    from tokenizers import AddedToken

    output = Path(output)
    proto = load_sp_proto(model_file)
    tok = build_tokenizer(model_file)
    source_config = source_config or {}
    added = [v for _, v in sorted(((int(k), v) for k, v in (source_config.get("added_tokens_decoder") or {}).items()))
             if v.get("special")]
    for entry in added:  # the source's specials: whole, never split, at the ids its vocabulary gives them
        if tok.token_to_id(entry["content"]) is None:
            raise CheckpointError(f"{model_file}: added special token {entry['content']!r} of tokenizer_config.json "
                                  "is not a piece of the SentencePiece model")
    tok.add_special_tokens([AddedToken(e["content"], special=True, normalized=False) for e in added])
    tok.save(str(output / "tokenizer.json"))
    shutil.copyfile(model_file, output / "tokenizer.model")
    specials = {k: v for k, v in special_tokens(proto).items() if v is not None}
    specials.update({k: v for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                     if isinstance(v := source_config.get(k), str)})
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": int(model_max_length),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode like SentencePiece
        # SentencePiece's add_dummy_prefix, under the key llama.cpp's GGUF converter reads; without it libllama
        # assumes a dummy prefix and puts a "▁" piece at the start of every text and after every special token
        # (transformers takes the prefix from tokenizer.json's normalizer and ignores this key)
        "add_prefix_space": bool(proto.normalizer_spec.add_dummy_prefix),
    }
    if chat_template:
        cfg["chat_template"] = chat_template
    (output / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (output / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")


def runtime_warnings(model_file: str | Path) -> list[dict[str, str]]:
    """Properties of a SentencePiece model that runtimes other than SentencePiece/transformers treat differently,
    each as ``{"property", "detail", "effect", "advice"}``. llama.cpp's SentencePiece tokenizer (the one its
    GGUF converter selects for a ``tokenizer.model``) applies none of the normalizer rules and, without byte
    fallback, has no way to encode a character that is not a piece."""
    proto = load_sp_proto(model_file)
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    pieces = {p.piece for p in proto.pieces}
    found: list[dict[str, str]] = []
    if ns.precompiled_charsmap:
        found.append({
            "property": "normalizer rules",
            "detail": f"normalization rule {ns.name or 'custom'!r} (a precompiled character map: NFKC-style "
                      "rewriting of full-width and compatibility characters)",
            "effect": "llama.cpp does not apply the character map, so text with characters it rewrites "
                      "(full-width digits and letters, compatibility forms) gets other ids there than in "
                      "SentencePiece/transformers, or cannot be encoded at all.",
            "advice": "normalise input text the same way before sending it to llama.cpp-based runtimes "
                      "(Python: unicodedata.normalize('NFKC', text) for nfkc/nmt_nfkc), or serve the model with "
                      "transformers/vLLM, which use tokenizer.json's normalizer.",
        })
    if ns.remove_extra_whitespaces:
        found.append({
            "property": "extra-whitespace removal",
            "detail": "remove_extra_whitespaces=true (leading, trailing and repeated spaces are dropped)",
            "effect": "llama.cpp keeps those spaces, so text with leading, trailing or repeated spaces gets other "
                      "ids there than in SentencePiece/transformers.",
            "advice": "collapse runs of spaces and strip the text before sending it to llama.cpp-based runtimes.",
        })
    if not ts.byte_fallback:
        found.append({
            "property": "no byte fallback",
            "detail": "byte_fallback=false: characters that are not pieces become <unk> in SentencePiece",
            "effect": "llama.cpp encodes a character outside the vocabulary as byte pieces (<0x..>), which this "
                      "vocabulary lacks: llama_tokenize fails (an uncaught exception that aborts the process) "
                      "instead of producing <unk>.",
            "advice": "keep text with characters outside the vocabulary away from llama.cpp-based runtimes "
                      "(check with the SentencePiece model: an <unk> in its output marks such text), or serve "
                      "the model with transformers/vLLM.",
        })
    missing = [name for ch, name in (("\n", "newline"), ("\t", "tab")) if ch not in pieces
               and f"<0x{ord(ch):02X}>" not in pieces]
    if missing:
        found.append({
            "property": f"missing {' and '.join(missing)} piece",
            "detail": f"no piece for {' or '.join(missing)} and no byte piece for it"
                      + (" (the normalizer turns it into a space before SentencePiece sees it)"
                         if ns.precompiled_charsmap else ""),
            "effect": f"text containing a {' or a '.join(missing)} cannot be encoded by llama.cpp "
                      "(llama_tokenize aborts); SentencePiece/transformers map it to a space or <unk>.",
            "advice": f"replace {' and '.join(missing)} characters in prompts for llama.cpp-based runtimes "
                      "(e.g. by a space, as the normalizer does), or serve the model with transformers/vLLM.",
        })
    return found
