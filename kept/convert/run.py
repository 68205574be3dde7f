"""``convert_checkpoint``: a source checkpoint of any supported family -> a stock ``LlamaForCausalLM``.

The family comes from config.json (:mod:`kept.convert.families`), the steps from the generic planner
(:mod:`kept.convert.plan`), the weights from the streaming writer (:mod:`kept.convert.writer`), the fidelity
report from the layer-streaming comparison against transformers' own class of the family (:mod:`kept.fidelity`).
The whole output -- weights, config, tokenizer, fidelity report, card -- is written into a temporary directory
that replaces ``output`` only when everything succeeded, and only if ``output`` is ours (:mod:`kept.atomic`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from kept.atomic import atomic_dir, check_output
from kept.checkpoint import FLOAT_DTYPES, TensorReader
from kept.convert.families import Arch, Family, read_source
from kept.convert.ops import arith_dtype, logit_offset
from kept.convert.graft import KV_INITS, check_kv_heads, graft_record
from kept.convert.plan import APPROX, CENTRED_NORMS, MLP_TARGETS, NORMS, check_mapping, default_norm, plan_conversion
from kept.convert.writer import _Source, bound_heap, parse_size, write_weights
from kept.errors import CheckpointError, ConfigError
from kept.progress import Progress

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OVERWRITE_HINT = "choose another output directory, or pass --overwrite (overwrite=True) to replace it"
GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
# tokenizer files of a tokenizers-library (BPE) source, carried over unchanged
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model")


# ---- checks on the source ----------------------------------------------------------------------------------


def check_tokenizer(source: Path, family: Family, arch: Arch) -> Path:
    """The source's tokenizer must exist, parse, and fit config.json's vocabulary (and, for SentencePiece, its
    bos/eos ids). Returns the tokenizer file: ``tokenizer.json`` where the source has one (Orion: never), else
    ``tokenizer.model``."""
    if family.name == "orion" or (family.tokenizer == "sentencepiece" and not (source / "tokenizer.json").is_file()):
        from kept.tokenizer import load_sp_proto

        path = source / "tokenizer.model"
        proto = load_sp_proto(path)  # CheckpointError if missing or unreadable
        n = len(proto.pieces)
        ts = proto.trainer_spec
        for key, sp_id in (("bos_token_id", ts.bos_id), ("eos_token_id", ts.eos_id)):
            want = arch.special_ids.get(key)
            if isinstance(want, int) and want != sp_id:
                raise CheckpointError(f"{path}: tokenizer's {key.split('_')[0]} id is {sp_id}, config.json {key} is "
                                      f"{want}")
    else:
        from tokenizers import Tokenizer

        path = source / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing tokenizer.json ({family.name} checkpoints ship a tokenizers "
                                  "tokenizer)")
        try:
            n = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
        except Exception as exc:  # the tokenizers library raises its own Exception subclasses
            raise CheckpointError(f"{path}: not a tokenizers file ({type(exc).__name__}: {exc})") from exc
    if n > arch.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {n} tokens but config.json vocab_size is {arch.vocab_size}")
    return path


def _json(obj: dict[str, Any]) -> str:
    """Indented JSON; a non-finite number is an error naming its key (NaN is not JSON)."""
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"conversion: {key} is {value}, not a finite number")
    try:
        return json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise CheckpointError(f"conversion: a reported value is not finite ({exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc


def _generation_config(source: Path, arch: Arch) -> dict[str, Any]:
    src = _read_json(source / "generation_config.json")
    gen = {k: v for k, v in arch.special_ids.items() if v is not None}
    gen.update({k: src[k] for k in GENERATION_KEYS + ("bos_token_id", "eos_token_id", "pad_token_id")
                if src.get(k) is not None})  # a chat model's own end-of-turn ids (eos_token_id lists) included
    return gen


def _is_chat(source: Path) -> bool:
    tok_cfg = _read_json(source / "tokenizer_config.json")
    return bool(tok_cfg.get("chat_format") or tok_cfg.get("chat_template")) or (source / "chat_template.jinja").is_file()


def runtimes(plan_exactness: str, llama_cfg: dict[str, Any]) -> dict[str, str]:
    """Which runtimes compute the converted model as transformers does, and what the others would compute."""
    act = llama_cfg["hidden_act"]
    rope = llama_cfg["rope_parameters"]["rope_type"]
    out = {"transformers": "loads it as stock LlamaForCausalLM (the reference for every fidelity figure)"}
    if act == "silu":
        out["vLLM"] = "loads it (LlamaForCausalLM, SiLU MLP)"
        out["llama.cpp"] = "converts and runs it (llama architecture" + {
            "llama3": ", partial rotary through rope_freqs)", "longrope": (
                "; its Llama converter writes no per-frequency longrope factors, so RoPE would differ: not checked)"),
            "dynamic": "; it ignores dynamic NTK scaling: equal up to max_position_embeddings)"}.get(rope, ")")
    else:
        out["vLLM"] = f"refuses it: its Llama MLP accepts only hidden_act 'silu', this model has {act!r}"
        out["llama.cpp"] = (f"would compute something else: its Llama graph always applies SiLU, this model needs "
                            f"{act!r}; convert with mlp_target='runtimes' for a model it runs" + (
                                "" if act.startswith("gelu") or act == "quick_gelu" else
                                f" (not possible for {act!r}: it has no SiLU form)"))
    return out


# ---- the conversion ----------------------------------------------------------------------------------------


def convert_checkpoint(
    *,
    source: str | Path,
    output: str | Path,
    norm: str | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    calibration: str | Path | None = None,
    fidelity_tokens: int = 2048,
    fit_tokens: int = 8192,
    chat: bool | None = None,
    mlp_target: str | None = None,
    kv_heads: int | None = None,
    kv_init: str = "fit",
    layer_fit: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the checkpoint ``source`` (any supported family) into a stock Llama checkpoint at ``output``;
    return the fidelity report (also written as fidelity.json / fidelity.md, with conversion.json, next to the
    weights).

    ``norm``: ``paper`` | ``centered`` | ``exact`` | ``fit`` (see :mod:`kept.convert.plan`; RMSNorm sources take
    ``exact``, the same as ``paper``); None: the most faithful the source allows (:func:`~kept.convert.plan.default_norm`).
    ``mlp_target`` (non-SiLU MLPs): ``runtimes`` (SiLU-gated, approximate, loads in vLLM and llama.cpp) or
    ``transformers`` (the source's activation, exact, transformers only); None: ``transformers``. ``dtype``: output
    dtype, default the source's. ``calibration``: a packed corpus directory, a JSON-lines corpus (``{"text": ...}``
    per line) or a plain text file (tokenized with the source's tokenizer); required for ``fit`` (gains fitted on
    its first ``fit_tokens`` tokens), read by the fits of norms Llama cannot hold and the calibration pass (else the
    built-in sample), and used for the fidelity report (its last ``fidelity_tokens`` tokens; without it a built-in
    multilingual sample). ``kv_heads`` (G): graft MHA -> GQA, merging the KV heads into G (G divides their count)
    with ``kv_init`` (``mean`` | ``aligned`` | ``fit``, :mod:`kept.convert.graft`); ``layer_fit``: refit the linear
    maps around the modules stock Llama cannot hold on calibration text (:mod:`kept.convert.calibrate`; an
    approximate conversion or a graft only). Both read the first ``fit_tokens`` calibration tokens and need at
    least ``hidden_size + 1`` of them.
    ``fidelity_tokens=0`` skips the metrics. ``chat`` (Orion): write the Llama-3 chat template (default: when the
    source's tokenizer_config names a chat format); other families carry their tokenizer files, chat template
    included, unchanged. ``output`` is replaced only if an earlier conversion wrote it (:mod:`kept.atomic`), or
    with ``overwrite``; it may never be, contain or lie inside ``source`` or ``calibration``. Raises a
    :class:`~kept.errors.KeptError` naming the file, tensor or key on bad input, and then leaves ``output`` as it was.
    """
    from kept.card import source_card_metadata, write_model_card
    from kept.convert.calibrate import calibration_ids, check_refit, refit_checkpoint, teacher_sites
    from kept.convert.stream import fit_sites
    from kept.fidelity import (
        check_ids,
        fidelity_markdown,
        fidelity_report,
        split_batches,
    )

    source, output = Path(source), Path(output)
    bound_heap()
    if norm is not None and norm not in NORMS:
        raise ConfigError(f"unknown norm mapping {norm!r}; expected one of {', '.join(NORMS)}")
    mlp_target = mlp_target or "transformers"
    if mlp_target not in MLP_TARGETS:
        raise ConfigError(f"unknown mlp_target {mlp_target!r}; expected one of {', '.join(MLP_TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if kv_init not in KV_INITS:
        raise ConfigError(f"unknown kv_init {kv_init!r}; expected one of {', '.join(KV_INITS)}")
    if fidelity_tokens < 0 or fit_tokens <= 0:
        raise ConfigError(f"fidelity_tokens ({fidelity_tokens}) must be >= 0 and fit_tokens ({fit_tokens}) > 0")
    max_bytes = parse_size(max_shard_size)
    inputs = [source] + ([Path(calibration)] if calibration is not None else [])
    check_output(output, inputs=inputs, overwrite=overwrite, hint=OVERWRITE_HINT)

    family, arch, raw_cfg = read_source(source)
    if norm is None:
        norm = default_norm(family, arch, mlp_target=mlp_target, where=str(source / "config.json"))
    check_mapping(family, arch, norm=norm, mlp_target=mlp_target, where=str(source / "config.json"))
    if norm == "fit" and calibration is None:
        raise ConfigError("norm 'fit' needs calibration text: pass calibration=<packed corpus dir>")
    if kv_heads is not None:
        check_kv_heads(kv_heads, heads=arch.num_heads, current=arch.num_kv_heads, where=str(source / "config.json"))
    with TensorReader(source) as reader:
        for name in reader.names():
            info = reader.info(name)
            if info.dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{source / info.file}: tensor {name!r} has dtype {str(info.dtype).removeprefix('torch.')}; "
                    "a checkpoint's weights must be floating point (float16, bfloat16, float32 or float64)"
                )
        shapes = {n: reader.info(n).shape for n in reader.names()}
        embed_name = family.tensors["embed"][0]
        emb = shapes.get(embed_name)
        if emb is not None and emb[0] != arch.vocab_size:
            raise CheckpointError(f"{source / 'config.json'}: vocab_size {arch.vocab_size} differs from the {emb[0]} "
                                  f"rows of {embed_name}")
        out_name = dtype or str(arch.torch_dtype or "")
        if out_name not in DTYPES and emb is not None:
            out_name = str(reader.info(embed_name).dtype).removeprefix("torch.")
        if out_name not in DTYPES:
            raise CheckpointError(f"{source}: cannot infer an output dtype from {out_name!r}; pass dtype=")
        out_dtype = DTYPES[out_name]
        plan = plan_conversion(family=family, arch=arch, source_shapes=shapes, norm=norm, dtype=out_name,
                               mlp_target=mlp_target, where=str(source))
        log.info("%s -> Llama, norm %s, mlp_target %s: %s%s", family.name, norm, mlp_target, plan.exactness,
                 "".join(f"; {d['module']}: {d['change']}" for d in plan.divergences))
        centred = norm in CENTRED_NORMS and arch.norm_kind == "layer"  # the stream is centred (LayerNorm sources)
        # the tokenizer after the weights: a checkpoint labelled as another family is named by its tensors first
        tok_file = check_tokenizer(source, family, arch)
        tok_warnings: list[dict[str, str]] = []
        if tok_file.name == "tokenizer.model":
            from kept.tokenizer import runtime_warnings

            tok_warnings = runtime_warnings(tok_file)
        for w in tok_warnings:
            log.warning("tokenizer: %s (%s). %s What to do: %s", w["property"], w["detail"], w["effect"],
                        w["advice"])

        def calib(spec: str | Path | None, *, n_tokens: int, from_end: bool = False) -> tuple[torch.Tensor, str]:
            return calibration_ids(spec, tokenizer=tok_file, bos=arch.special_ids.get("bos_token_id"),
                                   eos=arch.special_ids.get("eos_token_id"), n_tokens=n_tokens,
                                   max_len=arch.max_position_embeddings, from_end=from_end)

        refit = kv_heads is not None or layer_fit  # the calibration pass (kept.convert.calibrate)
        gains = None
        if plan.fits or refit:  # the values fitted before the weights are written, and the calibration pass
            fit_ids, fit_what = calib(calibration, n_tokens=fit_tokens)
            where = str(calibration or tok_file)
            check_ids(fit_ids, arch.vocab_size, where)
            if calibration is None:
                log.warning("fitting on the built-in sample (%d tokens); pass calibration= for a better fit",
                            fit_ids.numel())
            elif fidelity_tokens and Path(calibration).is_dir():
                manifest = _read_json(Path(calibration) / "manifest.json")
                if manifest.get("num_sequences", 0) * manifest.get("max_length", 0) < fit_tokens + fidelity_tokens:
                    log.warning("calibration corpus %s is smaller than fit_tokens + fidelity_tokens: the fitting and "
                                "the fidelity batches overlap, which flatters the fitted mapping", calibration)
        if refit:
            check_refit(fit_ids, exactness=plan.exactness, hidden_size=arch.hidden_size, kv_heads=kv_heads,
                        kv_init=kv_init, layer_fit=layer_fit, fit_tokens=fit_tokens,
                        where=(str(source / "config.json"), str(calibration or "built-in calibration sample")))
        if plan.fits:  # gains of 'fit', and the norms stock Llama cannot hold: fitted on the source's activations
            log.info("fit: %d values on the source's activations over %d calibration tokens", len(plan.fits),
                     fit_ids.numel())
            gains = fit_sites(teacher=source, batches=split_batches(fit_ids), sites=plan.fits, device=device)
            for site, g in gains.items():
                if not bool(torch.isfinite(g).all()):
                    raise CheckpointError(f"{where}: fitted value {site!r} is not finite")

        src = _Source(reader, arith=arith_dtype(out_dtype))
        chat = _is_chat(source) if chat is None else chat
        with atomic_dir(output, inputs=inputs, overwrite=overwrite, hint=OVERWRITE_HINT) as tmp:
            offsets: list[torch.Tensor] = []
            off = plan.offset
            stage = tmp / ".calibration-stage" if refit else tmp  # the conversion the calibration pass refits
            stage.mkdir(exist_ok=True)
            write_weights(reader=src, plan=plan, out_dir=stage, out_dtype=out_dtype, max_shard_size=max_bytes,
                          gains=gains, aside=lambda s: offsets.append(logit_offset(s, **off)),
                          aside_reads=tuple(n for n in (off["head"], off["beta"], off["bias"]) if n))
            offset = offsets[0]
            head_step = next((s for s in plan.steps if s.target == "lm_head.weight"), None)
            same_head = (head_step is not None and head_step.verbatim and head_step.sources[0] == off["head"]
                         and reader.info(off["head"]).dtype == out_dtype)  # the head is copied as stored
            del src  # release the work buffers before the fidelity pass
            llama_config, refit_report = plan.llama_config, None
            if refit:
                llama_config, refit_report = refit_checkpoint(
                    teacher=source, stage=stage, out_dir=tmp, config=llama_config, ids=fit_ids, what=fit_what,
                    kv_heads=kv_heads, kv_init=kv_init, layer_fit=layer_fit, centred=centred,
                    sites=teacher_sites(family, arch, llama_config), out_dtype=out_dtype, max_shard_size=max_bytes,
                    where=str(calibration or source / "config.json"), device=device)
                same_head = same_head and "final_softcap" not in refit_report  # the refit scaled lm_head
            (tmp / "config.json").write_text(json.dumps(llama_config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(_generation_config(source, arch), indent=2) + "\n")
            chat_template = _write_tokenizer(source, tmp, family, arch, tok_file, chat=chat)

            common = {
                "family": family.name,
                "source_norm": arch.norm_kind,
                "norm": norm,
                "centered": centred,
                "mlp_target": mlp_target if arch.hidden_act != "silu" or not arch.gated_mlp else None,
                "source": str(source),
                "dtype": out_name,
                "exactness": APPROX if kv_heads is not None else plan.exactness,
                "divergences": plan.divergences + ([{"module": "attention", "change": (
                    f"multi-head -> grouped-query attention: {arch.num_kv_heads} KV heads merged into {kv_heads} "
                    f"(kv_init {kv_init})")}] if kv_heads is not None else []),
                "final_norm_logit_offset_norm": float(torch.linalg.vector_norm(offset)),
                "graft": graft_record(llama_config, kv_heads_source=arch.num_kv_heads, kv_init=kv_init)
                if kv_heads is not None else None,
                "layer_fit": layer_fit,
            }
            report: dict[str, Any] = {
                **common,
                "n_tokens": 0,
                "kl_mean": None,
                "kl_max": None,
                "top1_agreement": None,
                "max_abs_dlogit": None,
                "layer_rel_err": [],
                "mapping": plan.table,
                "dropped": plan.dropped_table,
            }
            if fidelity_tokens:
                if calibration is not None:
                    ids = calib(calibration, n_tokens=fidelity_tokens, from_end=True)[0]
                    report["calibration"] = f"{calibration} (last sequences)"
                else:
                    ids = calib(None, n_tokens=fidelity_tokens)[0][:, :fidelity_tokens]
                    report["calibration"] = "built-in multilingual sample"
                check_ids(ids, arch.vocab_size, str(calibration or tok_file))
                report.update(fidelity_report(
                    teacher=source, student=tmp, centred=centred, ids=ids,
                    logit_offset=offset if norm == "exact" and (off["beta"] or off["bias"]) else None,
                    device=device, progress=_layer_progress(arch.num_layers), same_head=same_head,
                ))
            (tmp / "fidelity.json").write_text(_json(report))
            (tmp / "fidelity.md").write_text(fidelity_markdown(report))
            conversion = {
                **common,
                "chat_template": chat_template,
                "runtimes": runtimes(plan.exactness, plan.llama_config),
                "tokenizer_warnings": tok_warnings,
                "source_card": source_card_metadata(source, calibration=calibration),
                "calibration_fit": refit_report,
            }
            (tmp / "conversion.json").write_text(_json(conversion))
            write_model_card(tmp)
    return report


def _write_tokenizer(source: Path, tmp: Path, family: Family, arch: Arch, tok_file: Path, *, chat: bool) -> str | None:
    """The converted model's tokenizer files; returns which chat template it carries (``llama3``, ``source``, None).

    Orion (SentencePiece): ``tokenizer.json`` built for the stock fast tokenizer, with the Llama-3 chat template for
    chat models (:func:`kept.tokenizer.write_tokenizer`). A source with a ``tokenizer.json``: its files unchanged
    (special tokens and chat template included). A remote-code SentencePiece source (InternLM2, Baichuan2):
    ``tokenizer.json`` built from its ``tokenizer.model``, its added specials and chat template carried over."""
    from kept.tokenizer import write_tokenizer

    if family.name == "orion":
        from kept.chat import LLAMA3_TEMPLATE

        write_tokenizer(model_file=tok_file, output=tmp, model_max_length=arch.max_position_embeddings,
                        chat_template=LLAMA3_TEMPLATE if chat else None)
        return "llama3" if chat else None
    if tok_file.name == "tokenizer.model":
        src_cfg = _read_json(source / "tokenizer_config.json")
        template = src_cfg.get("chat_template")
        if template is None and (source / "chat_template.jinja").is_file():
            template = (source / "chat_template.jinja").read_text()
        write_tokenizer(model_file=tok_file, output=tmp, model_max_length=arch.max_position_embeddings,
                        chat_template=template, source_config=src_cfg)
        return "source" if template else None
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    return "source" if _is_chat(source) else None


def _layer_progress(n_layers: int) -> Any:
    """The fidelity pass's per-layer callback as progress lines (layers done, rate, ETA, the layer's error)."""
    bar = Progress(n_layers, desc="convert: fidelity", unit="layer")

    def report(message: str) -> None:
        bar.set_postfix(last=message.removeprefix("fidelity: "))
        bar.update(1)

    return report


def cli(argv: list[str]) -> int:
    """``kept convert SOURCE OUTPUT [--norm ...]``"""
    from kept.convert.families import FAMILIES

    ap = argparse.ArgumentParser(prog="kept convert", description="Convert a decoder-only LLM of any supported "
                                 f"family ({', '.join(FAMILIES)}) to stock Llama: exact where the algebra allows, "
                                 "else approximate and measured.")
    ap.add_argument("source", help="checkpoint directory, or a hub id REPO@REVISION (weights/config/tokenizer only)")
    ap.add_argument("output", help="output directory (written atomically)")
    ap.add_argument("--norm", default=None, choices=NORMS,
                    help="LayerNorm -> RMSNorm mapping (default: the most faithful the source allows; RMSNorm "
                         "sources: exact)")
    ap.add_argument("--mlp-target", choices=MLP_TARGETS, default=None,
                    help="non-SiLU MLPs: 'transformers' (default) = the source's activation (exact; transformers "
                         "only), 'runtimes' = SiLU-gated (approximate; vLLM and llama.cpp load it)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="output dtype (default: the source's)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    ap.add_argument("--calibration", default=None,
                    help="calibration text: a packed corpus dir, a .jsonl corpus ({\"text\": ...} per line) or a plain "
                         "text file (needed for --norm fit; the first --fit-tokens tokens for the fits of norms Llama "
                         "cannot hold, --kv-init aligned/fit and --layer-fit, default the built-in sample; the last "
                         "--fidelity-tokens for the report)")
    ap.add_argument("--fidelity-tokens", type=int, default=2048, help="tokens for the fidelity report (0: skip)")
    ap.add_argument("--fit-tokens", type=int, default=8192,
                    help="calibration tokens for the fitted values, --kv-init aligned/fit and --layer-fit")
    ap.add_argument("--kv-heads", type=int, default=None, metavar="G",
                    help="graft multi-head -> grouped-query attention: merge the KV heads into G (G divides them)")
    ap.add_argument("--kv-init", choices=KV_INITS, default="fit",
                    help="how --kv-heads merges: mean (GQA mean pooling), aligned (heads rotated before merging), "
                         "fit (activation-aware least squares; default)")
    ap.add_argument("--layer-fit", action="store_true",
                    help="refit the linear maps around what stock Llama cannot hold (parallel block, GELU, q/k and "
                         "sandwich norms, a graft) in closed form on calibration text, layer by layer")
    ap.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                    help="Orion: write the Llama-3 chat template (default: if the source is a chat model)")
    ap.add_argument("--device", default="cpu", help="device for the fit and fidelity forward passes")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace OUTPUT even if it holds files kept did not write (never the source itself)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kept.source import resolve_source

    local = [args.source] if Path(args.source).is_dir() else []
    check_output(args.output, inputs=local, overwrite=args.overwrite, hint=OVERWRITE_HINT)  # before any download
    source = resolve_source(args.source, cache_dir=Path(args.output).parent / ".sources")
    report = convert_checkpoint(
        source=source, output=args.output, norm=args.norm, dtype=args.dtype, max_shard_size=args.max_shard_size,
        calibration=args.calibration, fidelity_tokens=args.fidelity_tokens, fit_tokens=args.fit_tokens,
        chat=args.chat, mlp_target=args.mlp_target, kv_heads=args.kv_heads, kv_init=args.kv_init,
        layer_fit=args.layer_fit, device=args.device, overwrite=args.overwrite,
    )
    summary = {k: report.get(k) for k in ("family", "norm", "mlp_target", "exactness", "divergences", "n_tokens",
                                          "kl_mean", "top1_agreement", "max_abs_dlogit",
                                          "final_norm_logit_offset_norm", "offset_corrected", "graft", "layer_fit")
               if k in report}
    print(json.dumps(summary, indent=2))
    return 0
