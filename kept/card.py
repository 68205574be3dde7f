"""Model cards: the ``README.md`` with Hugging Face YAML front matter that every exported stock-Llama checkpoint
carries (conversions, trained students, snapshots).

The card is built from the files beside the weights alone -- ``config.json``, ``conversion.json`` (mapping, the
source's card metadata, tokenizer warnings), ``training.json`` (recipe and budget), ``fidelity.json`` (of the
directory, or of the initial conversion a student was trained from) -- plus the evaluation summaries the
workflow wrote for the model, when there are any. Front matter: ``base_model`` (the hub source, when the source
is a hub snapshot), ``license`` (+ ``license_name``/``license_link``) and ``language`` carried from the source's
own card or config, ``library_name: transformers``, ``pipeline_tag: text-generation``, ``tags``.

A card starts with :data:`MARK` after its front matter; :func:`write_model_card` replaces only a README.md that
carries it (one this program wrote) and refuses to overwrite any other.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from kept.errors import CheckpointError, KeptError

MARK = "<!-- kept:model-card -->"
CARRIED_KEYS = ("license", "license_name", "license_link", "language")  # from the source's card / config

NORM_TEXT = {
    "paper": "the report's output-preserving mapping (OPM): RMSNorm weight = LayerNorm gamma, LayerNorm beta "
             "dropped, residual stream left as is (approximate wherever the stream has a mean or beta != 0)",
    "centered": "OPM on a mean-centred residual stream: embedding rows and the o_proj/down_proj outputs are "
                "centred (a change no LayerNorm sees), RMSNorm weight = gamma, beta dropped",
    "exact": "mean-centred residual stream, RMSNorm weight = gamma, and every LayerNorm beta folded into the "
             "biases of the linear layers that read it (attention_bias, mlp_bias); the final norm's beta, a "
             "per-vocabulary logit offset stock Llama cannot hold, is the one residual error",
    "fit": "OPM with the RMSNorm weights fitted by least squares on calibration text (Appendix A closed form)",
}
OBJECTIVE_TEXT = {
    "ut": "uptraining (UT): next-token cross-entropy on the transfer corpus",
    "xkd_h": "cross-architecture distillation on hidden states (XKD-h): MSE to the source teacher's residual "
             "stream after every layer",
    "xkd_z": "cross-architecture distillation on logits (XKD-z): KL divergence to the source teacher's "
             "next-token distribution",
}
EVAL_TEXT = {"h6": "H6 (lm-eval)", "kommlu": "KoMMLU (lm-eval)", "code": "code probe", "longctx": "long context",
             "mtbench": "MT-Bench"}


# ---- source metadata ---------------------------------------------------------------------------------------


def front_matter(text: str, *, where: str = "README.md") -> dict[str, Any]:
    """The YAML front matter of a Markdown card (``{}`` when it has none)."""
    import yaml

    m = re.match(r"\A---\r?\n(.*?)\r?\n---\r?\n", text, flags=re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{where}: unreadable YAML front matter ({exc})") from exc
    return data if isinstance(data, dict) else {}


def source_card_metadata(source: str | Path, *, calibration: str | Path | None = None) -> dict[str, Any]:
    """What a converted card carries over from the source dir: ``base_model`` (hub snapshots: SOURCE.json),
    ``license``/``license_name``/``license_link``/``language`` from its README.md front matter or config.json,
    and ``license_files`` (LICENSE* files present). A missing ``language`` is filled from the languages of the
    ``calibration`` corpus (its manifest.json), when given."""
    source = Path(source)
    languages = _read_json(Path(calibration) / "manifest.json").get("languages") if calibration else None
    meta: dict[str, Any] = {}
    card = source / "README.md"
    fm = front_matter(card.read_text(encoding="utf-8", errors="replace"), where=str(card)) if card.is_file() else {}
    cfg = _read_json(source / "config.json")
    for key in CARRIED_KEYS:
        value = fm.get(key, cfg.get(key))
        if value not in (None, "", []):
            meta[key] = value
    if "language" not in meta and languages:
        meta["language"] = list(languages)
    record = _read_json(source / "SOURCE.json")
    if record.get("repo"):
        meta["base_model"] = record["repo"]
        meta["base_model_revision"] = record.get("commit")
    licenses = sorted(p.name for p in source.glob("LICENSE*") if p.is_file())
    if licenses:
        meta["license_files"] = licenses
    return meta


# ---- the card ----------------------------------------------------------------------------------------------


FAMILY_TEXT = {"orion": "Orion", "olmo": "OLMo", "stablelm": "StableLM", "gpt_neox": "GPT-NeoX", "phi": "Phi"}


def render_card(*, model_dir: str | Path, fidelity: dict[str, Any] | None = None,
                evaluations: dict[str, dict[str, Any]] | None = None, name: str | None = None) -> str:
    """The card of ``model_dir`` (see the module docstring). ``fidelity``: a fidelity report (default: the
    directory's fidelity.json); ``evaluations``: ``{label: summary}`` of the workflow's evaluation files
    (``label`` e.g. ``"h6"``, ``"mtbench-llama3"``)."""
    import yaml

    model_dir = Path(model_dir)
    cfg = _read_json(model_dir / "config.json")
    conv = _read_json(model_dir / "conversion.json")
    training = _read_json(model_dir / "training.json")
    if fidelity is None:
        fidelity = _read_json(model_dir / "fidelity.json") or None
    tok_cfg = _read_json(model_dir / "tokenizer_config.json")
    src_meta = dict(conv.get("source_card") or {})
    name = name or _default_name(conv, training)
    norm = conv.get("norm")
    objective = training.get("objective")

    meta: dict[str, Any] = {}
    if src_meta.get("base_model"):
        meta["base_model"] = src_meta["base_model"]
    for key in ("license", "license_name", "license_link"):
        if key in src_meta:
            meta[key] = src_meta[key]
    if src_meta.get("language"):
        meta["language"] = src_meta["language"]
    meta.update(library_name="transformers", pipeline_tag="text-generation")
    family = conv.get("family", "orion")
    tags = ["llama", "kept", f"{family.replace('_', '-')}-to-llama", f"norm-{norm}" if norm else None,
            objective.replace("_", "-") if objective else None, "chat" if tok_cfg.get("chat_template") else None]
    meta["tags"] = [t for t in tags if t]

    out = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", MARK, "",
           f"# {name}", ""]
    out += _summary(cfg, conv, training, src_meta)
    out += _made(conv, training, src_meta, fidelity)
    out += _fidelity(fidelity, trained=bool(training), family=family)
    if evaluations:
        out += _evaluations(evaluations)
    out += _runtime(cfg, conv, tok_cfg)
    out += _usage(cfg, tok_cfg, name)
    return "\n".join(out).rstrip() + "\n"


def write_model_card(model_dir: str | Path, *, fidelity_dir: str | Path | None = None,
                     evaluations: dict[str, dict[str, Any]] | None = None, name: str | None = None,
                     output: str | Path | None = None) -> Path:
    """Write the card to ``output`` (default ``model_dir/README.md``), atomically. ``fidelity_dir``: where the
    fidelity.json comes from when ``model_dir`` has none (a trained student's initial conversion). Refuses to
    replace a README.md that this program did not write."""
    from kept.atomic import atomic_file

    model_dir = Path(model_dir)
    target = Path(output) if output is not None else model_dir / "README.md"
    if target.exists():
        head = target.read_text(encoding="utf-8", errors="replace")
        if MARK not in head:
            raise KeptError(f"{target}: exists and was not written by kept (no {MARK} line); not overwriting it")
    fidelity = None
    if not (model_dir / "fidelity.json").is_file() and fidelity_dir is not None:
        fidelity = _read_json(Path(fidelity_dir) / "fidelity.json") or None
    text = render_card(model_dir=model_dir, fidelity=fidelity, evaluations=evaluations, name=name)
    with atomic_file(target, "w", encoding="utf-8") as fh:
        fh.write(text)
    try:
        target.chmod(0o644)
    except OSError:  # pragma: no cover - read-only file systems
        pass
    return target


def read_evaluations(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """``{label: summary}`` of evaluation summary files (``h6.json``, ``mtbench-llama3.json``, ...)."""
    found: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        data = _read_json(path)
        if not data:
            raise CheckpointError(f"{path}: missing or empty evaluation summary")
        found[path.stem] = data
    return found


# ---- sections ----------------------------------------------------------------------------------------------


def _summary(cfg: dict[str, Any], conv: dict[str, Any], training: dict[str, Any], src: dict[str, Any]) -> list[str]:
    source = _source_text(conv, src)
    size = (f"{cfg.get('num_hidden_layers')} layers, hidden size {cfg.get('hidden_size')}, "
            f"vocabulary {cfg.get('vocab_size')}")
    family = FAMILY_TEXT.get(conv.get("family", "orion"), conv.get("family"))
    runtimes = conv.get("runtimes") or {}
    loads = [r for r, text in runtimes.items() if text.startswith(("loads", "converts"))] or ["transformers", "vLLM",
                                                                                             "llama.cpp"]
    norm = " (LayerNorm)" if conv.get("source_norm", "layer") == "layer" else ""
    what = (f"A stock `LlamaForCausalLM` checkpoint ({size}) converted from the {family}{norm} model {source} "
            f"by KEPT (the open implementation of the Llamion report's method): it loads with stock "
            f"{', '.join(loads)}, no remote code.")
    lines = [what, ""]
    if conv.get("exactness"):
        changes = "; ".join(f"{d['module']}: {d['change']}" for d in conv.get("divergences") or [])
        lines += [f"Exactness class of the conversion: **{conv['exactness']}**" + (f" ({changes})" if changes else "")
                  + " -- measured below against the source family's own class.", ""]
    if training:
        step = training.get("step")
        state = f"a training snapshot at step {step} of {training.get('steps')}" if step else "the trained model"
        objective = training.get("objective")
        lines += [f"This is {state}: the conversion above, then {OBJECTIVE_TEXT.get(objective, objective)}.", ""]
    else:
        lines += ["This is the untrained conversion (no training after the mapping).", ""]
    return lines


def _made(conv: dict[str, Any], training: dict[str, Any], src: dict[str, Any],
          fidelity: dict[str, Any] | None) -> list[str]:
    lines = ["## How it was made", ""]
    norm = conv.get("norm")
    lines.append(f"- Source: {_source_text(conv, src)}" + (f"; license files carried: {', '.join(src['license_files'])}"
                                                          if src.get("license_files") else ""))
    if src.get("license"):
        name = f" ({src['license_name']})" if src.get("license_name") else ""
        link = f", {src['license_link']}" if src.get("license_link") else ""
        lines.append(f"- License: `{src['license']}`{name}{link}, carried from the source's card.")
    else:
        lines.append("- License: the source's card and config.json state none; the source's own terms apply.")
    if norm:
        lines.append(f"- Norm mapping `{norm}`: {NORM_TEXT.get(norm, norm)}.")
        lines.append(f"- Output dtype: {conv.get('dtype')}; final-norm logit offset ||lm_head @ beta_f|| = "
                     f"{_num(conv.get('final_norm_logit_offset_norm'))}.")
    graft, calib = conv.get("graft"), conv.get("calibration_fit") or {}
    if graft:
        kv = graft["kv_cache_bytes_per_token"]
        lines.append(f"- Attention grafted from multi-head to grouped-query: {graft['kv_heads_source']} KV heads merged "
                     f"into {graft['kv_heads']} (init `{graft['kv_init']}`), KV cache {_count(kv['source'])} -> "
                     f"{_count(kv['output'])} bytes per token.")
    if conv.get("layer_fit"):
        lines.append("- Layer fit: the linear maps around the modules stock Llama cannot hold refitted in closed form, "
                     "layer by layer, to the teacher's outputs.")
    if calib:
        lines.append(f"- Calibration of the graft / layer fit: {calib.get('n_tokens')} tokens of {calib.get('calibration')}.")
    if fidelity and fidelity.get("mapping"):
        n_t = sum(int(r.get("count", 0)) for r in fidelity["mapping"])
        n_d = sum(int(r.get("count", 0)) for r in fidelity.get("dropped", []))
        dropped = "; ".join(f"`{r['source']}` ({r['reason']})" for r in fidelity.get("dropped", []))
        lines.append(f"- Tensors: {n_t} written by {len(fidelity['mapping'])} mapping rules, {n_d} dropped"
                     + (f": {dropped}" if dropped else "") + " (full table: fidelity.md of the conversion).")
    if training:
        cfg = training.get("config") or {}
        summary = training.get("summary") or {}
        lines.append(f"- Training: {OBJECTIVE_TEXT.get(training.get('objective'), training.get('objective'))}; "
                     f"teacher `{training.get('teacher') or training.get('teacher_cache') or '-'}`.")
        budget = [f"{training.get('steps')} optimizer steps"]
        if cfg:
            gb = cfg.get("batch_size", 0) * cfg.get("grad_accum", 1) * (summary.get("world_size") or 1)
            length = cfg.get("max_length") or (summary.get("tokens", 0) // max(1, gb * (training.get("steps") or 1)))
            budget.append(f"global batch {gb} sequences of {length or 'corpus-length'} tokens")
            budget.append(f"peak LR {cfg.get('lr')} (warmup {cfg.get('warmup_steps')}, cosine to "
                          f"{cfg.get('min_lr_ratio')}x)")
            if training.get("objective") == "xkd_z":
                budget.append(f"temperature {cfg.get('temperature')}")
            budget.append(f"seed {cfg.get('seed')}")
        if summary.get("tokens"):
            budget.append(f"{_count(summary['tokens'])} training tokens")
        if summary.get("final_loss") is not None:
            budget.append(f"final loss {_num(summary['final_loss'])}")
        lines.append(f"- Budget: {', '.join(budget)}.")
        stop = summary.get("stop")
        if stop:  # stop at parity (kept.train.parity): why and when the run ended
            why = ("reached" if stop.get("reason") == "parity" else "had not reached")
            lines.append(f"- Stopped at step {stop.get('step')} of a {stop.get('ceiling')}-step ceiling: the held-out "
                         f"KL to the teacher ({stop.get('heldout_sequences')} sequences the run never trained on, "
                         f"checked every {stop.get('every')} steps) {why} its target {_num(stop.get('target'))} "
                         f"(from {_num(stop.get('kl_before'))} before training; last check "
                         f"{_num(stop.get('final_heldout_kl'))}).")
    return lines + [""]


def _fidelity(report: dict[str, Any] | None, *, trained: bool, family: str = "orion") -> list[str]:
    lines = ["## Fidelity to the source", ""]
    if not report or report.get("kl_mean") is None:
        return lines + ["Not measured (the conversion ran with `fidelity_tokens=0`).", ""]
    when = "the initial conversion this model was trained from (before training)" if trained else \
        "this conversion"
    per_seq = {"kl_mean": report.get("kl_per_sequence") or [], "top1_agreement": report.get("top1_per_sequence") or []}
    n_seq = len(per_seq["kl_mean"])
    lines += [f"The {FAMILY_TEXT.get(family, family)} source vs {when}: next-token distributions on "
              f"{report.get('n_tokens')} tokens of {report.get('calibration', 'calibration text')}, "
              f"output dtype {report.get('dtype')}"
              + (f"; ± one standard error over its {n_seq} sequences" if n_seq > 1 else "") + ":", "",
              "| metric | value |", "|---|---|"]
    for key in ("kl_mean", "kl_max", "top1_agreement", "max_abs_dlogit"):
        se = _standard_error(per_seq.get(key, []))
        lines.append(f"| {key} | {_num(report.get(key))}" + (f" ± {se:.2g}" if se is not None else "") + " |")
    for key, value in (report.get("offset_corrected") or {}).items():
        lines.append(f"| {key}, final-norm offset added back | {_num(value)} |")
    errs = report.get("layer_rel_err") or []
    if errs:
        lines += ["", f"Relative residual-stream error after the last layer: {_num(errs[-1])} "
                      f"(max over layers {_num(max(errs))})."]
    return lines + [""]


def _standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of per-sequence values (sequences of equal length, so their mean is the
    token mean); None for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _evaluations(evals: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Evaluation", "", "Scores the KEPT workflow measured for this model (its own summary files):", ""]
    for label, s in sorted(evals.items()):
        kind = label.split("-")[0]
        title = EVAL_TEXT.get(kind, kind) + (f", {label.split('-', 1)[1]} chat format" if kind == "mtbench" else "")
        if "columns" in s:
            cols = [c for c in s["columns"] if c.get("value") is not None]
            lines += [f"**{title}**" + (f" (limit {s['limit']} items per task)" if s.get("limit") else ""), "",
                      "| task | shots | metric | value | stderr | n |", "|---|---|---|---|---|---|"]
            lines += [f"| {c['name']} | {c.get('shots')} | {c.get('metric')} | {_num(c['value'])} | "
                      f"{_num(c.get('stderr'))} | {c.get('n', '')} |" for c in cols]
            lines += [f"| average | | | {_num(s.get('average'))} | | |", ""]
        elif kind == "mtbench":
            lines += [f"**{title}** (judge {s.get('judge')}): turn 1 {_num(s.get('turn1'))}, turn 2 "
                      f"{_num(s.get('turn2'))}, average {_num(s.get('average'))} on a 1-10 scale "
                      f"({s.get('n_judgments')} judgments, {s.get('n_failed')} failed).", ""]
        elif kind == "code":
            lines += [f"**{title}**: perplexity {_num(s.get('ppl'))}, greedy answer accuracy "
                      f"{_num(s.get('accuracy'))} on {s.get('n')} items.", ""]
        elif kind == "longctx":
            parts = [f"{name}: " + ", ".join(f"{n} tok {_num(p)}" for n, p in zip(src["lengths"], src["ppl"]))
                     for name, src in (s.get("sources") or {}).items()]
            lines += [f"**{title}** perplexity by input length (trained at {s.get('train_max_length')} tokens): "
                      + "; ".join(parts) + ".", ""]
        else:
            lines += [f"**{title}**: `{json.dumps(s)[:300]}`", ""]
    return lines


def _runtime(cfg: dict[str, Any], conv: dict[str, Any], tok_cfg: dict[str, Any]) -> list[str]:
    lines = ["## Runtime requirements", ""]
    biases = [k for k in ("attention_bias", "mlp_bias") if cfg.get(k)]
    if biases:
        lines.append(f"- `config.json` sets {' and '.join(f'`{b}: true`' for b in biases)} (folded LayerNorm "
                     "betas or the source's own biases): the runtime must load q/k/v/o and gate/up/down biases. transformers has both "
                     "options since 4.41 (checked with 5.24); vLLM's Llama reads both keys; llama.cpp's "
                     "converter and libllama load them as optional tensors (KEPT's `bench.run llamacpp`: f32 GGUF "
                     "log-probs within 1e-6 of transformers). A runtime that ignores them silently drops the "
                     "betas.")
    else:
        lines.append("- Plain Llama: no biases, RMSNorm, RoPE; any Llama runtime reads it.")
    for runtime, text in (conv.get("runtimes") or {}).items():
        lines.append(f"- {runtime}: {text}.")
    if tok_cfg.get("chat_template") and conv.get("chat_template") == "source":
        lines.append("- Chat template: the source's own, carried over unchanged in tokenizer_config.json.")
    elif tok_cfg.get("chat_template"):
        lines.append("- Chat template: the Llama-3 layout over Orion's own vocabulary (`<s>` starts the prompt, "
                     "`</s>` ends each turn, header markers are plain text), stored as a Jinja template in "
                     "tokenizer_config.json (and in the GGUF). transformers (`apply_chat_template`) and vLLM "
                     "render it as is. llama.cpp must render it with its Jinja engine: the default of current "
                     "llama-cli/llama-server, `--jinja` on builds from before it became the default; without "
                     "Jinja (`--no-jinja`, or the C API `llama_chat_apply_template`) llama.cpp has no built-in "
                     "renderer for it and refuses with \"this custom template is not supported\" rather than "
                     "render a different prompt. Generation stops at `</s>` (eos id "
                     f"{cfg.get('eos_token_id')}).")
    warnings = conv.get("tokenizer_warnings") or []
    if warnings:
        lines.append("- Tokenizer properties that runtimes other than SentencePiece/transformers treat "
                     "differently (found at conversion):")
        lines += [f"  - **{w['property']}**: {w['effect']} What to do: {w['advice']}" for w in warnings]
    elif conv.get("family", "orion") != "orion":
        lines.append("- Tokenizer: the source's tokenizers-library files (tokenizer.json, special tokens), unchanged.")
    else:
        lines.append("- Tokenizer: SentencePiece model with byte fallback, no normalizer rules that llama.cpp "
                     "skips (checked at conversion).")
    return lines + [""]


def _usage(cfg: dict[str, Any], tok_cfg: dict[str, Any], name: str) -> list[str]:
    chat = bool(tok_cfg.get("chat_template"))
    path = f"path/to/{name}"
    tf = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
          f'tok = AutoTokenizer.from_pretrained("{path}")',
          f'model = AutoModelForCausalLM.from_pretrained("{path}", dtype="auto")  # no trust_remote_code']
    if chat:
        tf += ['ids = tok.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,',
               '                              return_tensors="pt", return_dict=False)']
    else:
        tf += ['ids = tok("The capital of Korea is", return_tensors="pt").input_ids  # adds no BOS, as Orion']
    tf += ["out = model.generate(ids, max_new_tokens=64)",
           "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))", "```"]
    note = "   # OpenAI-compatible server; chats use tokenizer_config.json's template" if chat else ""
    vllm = ["```bash", f"vllm serve {path}{note}", "```"]
    gguf = f"{name}-f16.gguf"
    cpp = ["```bash", "# from a llama.cpp checkout: convert with llama.cpp's own converter, then run",
           f"python convert_hf_to_gguf.py {path} --outtype f16 --outfile {gguf}"]
    if chat:
        cpp += [f"llama-cli -m {gguf} --jinja -cnv          # --jinja: see Runtime requirements",
                f"llama-server -m {gguf} --jinja"]
    else:
        cpp += [f'llama-cli -m {gguf} -p "The capital of Korea is" -n 64']
    cpp += ["```"]
    return ["## How to run", "", "### transformers", "", *tf, "", "### vLLM", "", *vllm, "", "### llama.cpp", "",
            *cpp, ""]


# ---- helpers -----------------------------------------------------------------------------------------------


def _source_text(conv: dict[str, Any], src: dict[str, Any]) -> str:
    if src.get("base_model"):
        rev = src.get("base_model_revision")
        return f"`{src['base_model']}`" + (f" at commit `{rev}`" if rev else "")
    return f"`{conv.get('source', '?')}` (a local checkpoint)"


def _default_name(conv: dict[str, Any], training: dict[str, Any]) -> str:
    """``Orion-14B-Base-llama-exact``, ``...-xkd-z``, ``...-xkd-z-step200``: source name, mapping, method, step."""
    src = (conv.get("source_card") or {}).get("base_model") or conv.get("source") or "model"
    parts = [Path(str(src)).name, "llama", conv.get("norm")]
    if training.get("objective"):
        parts.append(str(training["objective"]).replace("_", "-"))
    if training.get("step"):
        parts.append(f"step{training['step']}")
    return "-".join(str(p) for p in parts if p)


def _num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _count(n: int | float) -> str:
    for value, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= value:
            return f"{n / value:.3g}{suffix}"
    return str(int(n))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def cli(argv: list[str]) -> int:
    """``kept card MODEL_DIR [--eval FILE ...] [--fidelity-from DIR]``: (re)write a model's card."""
    ap = argparse.ArgumentParser(prog="kept card", description="Write the model card (README.md) of a "
                                 "converted or trained checkpoint, with evaluation summaries if given.")
    ap.add_argument("model", help="stock-Llama model directory written by kept")
    ap.add_argument("--eval", nargs="*", default=[], help="evaluation summaries (h6.json, mtbench-llama3.json, ...)")
    ap.add_argument("--fidelity-from", default=None, help="directory whose fidelity.json to report (a trained "
                    "model's initial conversion)")
    ap.add_argument("--name", default=None, help="model name in the title (default: from the path)")
    ap.add_argument("--output", default=None, help="where to write (default MODEL/README.md)")
    args = ap.parse_args(argv)
    path = write_model_card(args.model, fidelity_dir=args.fidelity_from, evaluations=read_evaluations(args.eval),
                            name=args.name, output=args.output)
    print(path)
    return 0


def publish_card(*, model_dir: str | Path, evaluations: list[str | Path], output: str | Path,
                 fidelity_dir: str | Path | None = None) -> Path:
    """The workflow's final card of a model: its card re-rendered with the evaluation summary files, written to
    ``output`` and over the card in ``model_dir`` (which kept wrote at export; any other README.md is refused
    before anything is written)."""
    model_dir = Path(model_dir)
    own = model_dir / "README.md"
    if own.exists() and MARK not in own.read_text(encoding="utf-8", errors="replace"):
        raise KeptError(f"{own}: exists and was not written by kept (no {MARK} line); not overwriting it")
    evals = read_evaluations(list(evaluations))
    write_model_card(model_dir, fidelity_dir=fidelity_dir, evaluations=evals, output=output)
    return write_model_card(model_dir, fidelity_dir=fidelity_dir, evaluations=evals)
