"""llama.cpp compatibility check (issue 14): do the students' chat prompts and text reach llama.cpp as the same
token ids as in transformers, and does llama.cpp compute the same model?

Builds a tiny Orion chat teacher with a toy-world-like SentencePiece model (byte fallback, identity
normalisation), converts it with ``kept.convert`` (``exact``: biases included, Llama-3-layout chat template),
converts that with llama.cpp's own ``convert_hf_to_gguf.py`` (f32), and compares:

* chat prompts -- transformers ``apply_chat_template`` ids against llama.cpp rendering the GGUF's template the
  way llama-cli/llama-server do (``common_chat_templates_apply``, Jinja and ``--no-jinja``; a small C++ driver,
  bench/llamacpp_chat.cpp, linked to llama.cpp's libllama-common) and against llama-cpp-python's chat handler;
  the same for the template the students had before (its header markers spelled out), to show what llama.cpp
  did with it;
* plain text -- ``llama_tokenize`` against transformers on text with newlines, tabs, full-width characters and
  repeated spaces, for that tokenizer and for one with SentencePiece's defaults (nmt_nfkc, extra-whitespace
  removal, no byte fallback), whose conversion warns about exactly these (each text in its own process: an
  unencodable character aborts llama.cpp);
* logits -- max |log p| difference of the ``exact`` model, llama.cpp (f32 weights and KV cache) vs transformers;
* other source families -- tiny OLMo, StableLM (partial rotary, qkv bias), GPT-NeoX (Pythia-like: parallel
  residual, GELU MLP; ``mlp_target`` ``runtimes`` and ``transformers``) and Phi checkpoints
  (``kept.convert.tiny.make_checkpoint``), converted with ``exact`` and then by ``convert_hf_to_gguf.py`` (f32):
  max |log p| difference llama.cpp vs transformers' ``LlamaForCausalLM`` on the same converted checkpoint, over
  random id sequences. Their toy byte-level BPE has a pre-tokenizer hash llama.cpp cannot know, so the GGUF
  conversion pins the pre-tokenizer to ``gpt-2`` (the GPT-2 regex that ``ByteLevel`` uses; checked against the
  tokenizers library on the tokenizer's own lines) -- the only step of llama.cpp's converter that is replaced.

Needs llama-cpp-python built from source and the llama.cpp tree of its sdist (bench/requirements-llamacpp.txt says
how); without them it reports "skipped". ``KEPT_LLAMA_CPP_DIR`` (the llama.cpp tree) and ``KEPT_LLAMA_CPP_LIB``
(the directory holding libllama-common.so) override where they are looked for.

    .venv/bin/python -m bench.bench_llamacpp
    .venv/bin/python -m bench.run llamacpp
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "llamacpp"

# The students' template before issue 14: the same text, with the header markers spelled out in the source.
OLD_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Korea?"}],
    [{"role": "user", "content": "  Hi there!  "}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "안녕하세요? 世界はどう？"}],
    [{"role": "user", "content": "def f(x):\n\treturn x + 1\n\nWhat does f do?"}],
]
TEXTS = {
    "newline": "first line\nsecond line",
    "tab": "key\tvalue",
    "full-width digits": "価格は１２３円",
    "repeated spaces": "two  spaces and   three",
    "leading space": " leading",
    "plain": "Seoul is the capital of Korea.",
}

CHILD = r"""
import ctypes, json, sys
import numpy as np
import llama_cpp

mode, gguf = sys.argv[1], sys.argv[2]
arg = json.loads(sys.argv[3])
QUIET = llama_cpp.llama_log_callback(lambda *a: None)  # kept referenced: libllama calls it
if mode != "load":
    llama_cpp.llama_log_set(QUIET, ctypes.c_void_p(0))
if mode == "load":  # libllama's own log on stderr: why a model does not load
    llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=True)
    print("null")
elif mode == "tokenize":
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    print(json.dumps(llm.tokenize(arg.encode("utf-8"), add_bos=False, special=False)))
elif mode == "chat":
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    tmpl = llm.metadata["tokenizer.chat_template"]
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    out = []
    for msgs in arg:
        # the C API's built-in renderers (no Jinja): the return code -1 means "template not supported"
        arr = (llama_cpp.llama_chat_message * len(msgs))(
            *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in msgs])
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_chat_apply_template(tmpl.encode(), arr, len(msgs), True, buf, len(buf))
        c_api = {"rc": n} if n < 0 else {"prompt": buf.raw[:n].decode()}
        # llama-cpp-python's chat handler for a model with its own template (Jinja2ChatFormatter)
        res = Jinja2ChatFormatter(template=tmpl, eos_token=eos, bos_token=bos)(messages=msgs)
        ids = llm.tokenize(res.prompt.encode(), add_bos=not res.added_special, special=True)
        out.append({"c_api": c_api, "handler": {"prompt": res.prompt, "ids": ids}})
    print(json.dumps(out))
elif mode == "tokenize_many":
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    print(json.dumps([llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in arg]))
elif mode == "logits":
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=1,
                          type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
    llm.eval(arg)
    print(json.dumps(np.asarray(llm.scores[: len(arg)], dtype=np.float64).tolist()))
"""


def locate() -> dict[str, Any] | None:
    """llama-cpp-python, the llama.cpp tree (convert_hf_to_gguf.py, gguf-py, headers) and its libraries."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    trees = [os.environ["KEPT_LLAMA_CPP_DIR"]] if os.environ.get("KEPT_LLAMA_CPP_DIR") else \
        sorted(glob.glob(str(HERE / "_work" / "llama_cpp_python-*" / "vendor" / "llama.cpp")))
    tree = next((Path(t) for t in trees if (Path(t) / "convert_hf_to_gguf.py").is_file()), None)
    if tree is None:
        return None
    libs = [os.environ["KEPT_LLAMA_CPP_LIB"]] if os.environ.get("KEPT_LLAMA_CPP_LIB") else \
        [str(Path(llama_cpp.__file__).parent / "lib")] + sorted(
            str(Path(p).parent) for p in glob.glob(str(HERE / "_work" / "lcp-build" / "**" / "libllama-common.so"),
                                                   recursive=True))
    lib = next((Path(d) for d in libs if glob.glob(str(Path(d) / "libllama-common.so*"))), None)
    return {"tree": tree, "lib": lib, "version": getattr(llama_cpp, "__version__", "?")}


def _driver(found: dict[str, Any]) -> Path | None:
    """Compile bench/llamacpp_chat.cpp against llama.cpp's libllama-common (once; None if it cannot be built)."""
    if found["lib"] is None:
        return None
    exe = WORK / "llamacpp_chat"
    src = HERE / "llamacpp_chat.cpp"
    if exe.is_file() and exe.stat().st_mtime > src.stat().st_mtime:
        return exe
    tree, lib = found["tree"], found["lib"]
    cmd = ["g++", "-std=c++17", "-O1", str(src), "-o", str(exe), *(f"-I{tree / d}" for d in
           ("common", "include", "ggml/include", "vendor")), f"-L{lib}", f"-Wl,-rpath,{lib}", "-lllama-common",
           "-lllama", "-lggml", "-lggml-base"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"llamacpp_chat driver not built: {proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return exe


def _train_sp(path: Path, text: Path, **kwargs: Any) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(path.with_suffix("")), model_type="bpe",
                                   vocab_size=kwargs.pop("vocab_size", 600), character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1, **kwargs)
    return path


def _models(work: Path) -> dict[str, Path]:
    """Two tiny Orion chat teachers (toy-like and SentencePiece-default tokenizers), converted with ``exact``."""
    import torch

    from kept.convert import convert_checkpoint
    from kept.fidelity import BUILTIN_SAMPLE
    from kept.orion import new_orion_model, save_orion_checkpoint

    text = work / "text.txt"
    lines = [ln for ln in BUILTIN_SAMPLE.splitlines() if ln.strip()]
    text.write_text("\n".join(lines * 3 + [c["content"].replace("\n", " ") for conv in CONVERSATIONS for c in conv]
                              + ["def f(x):", "\treturn x + 1", "Seoul is the capital of Korea."]) + "\n")
    toks = {
        "toy": _train_sp(work / "toy.model", text, byte_fallback=True, normalization_rule_name="identity",
                         remove_extra_whitespaces=False, add_dummy_prefix=False, split_digits=True,
                         allow_whitespace_only_pieces=True),
        "spm-defaults": _train_sp(work / "spm.model", text, vocab_size=400),
    }
    out = {}
    for name, tok in toks.items():
        import sentencepiece as spm

        vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
        cfg = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "max_position_embeddings": 128, "rope_theta": 10000.0}
        torch.manual_seed(0)
        model = new_orion_model(cfg)
        with torch.no_grad():  # LayerNorm betas and gammas far from the defaults: the biases matter
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
        src = save_orion_checkpoint(model, work / f"orion-{name}", tokenizer_model=tok, num_shards=1, chat=True)
        out[name] = work / f"llama-{name}"
        convert_checkpoint(source=src, output=out[name], norm="exact", fidelity_tokens=0, chat=True)
    old = work / "llama-toy-old-template"  # tokenizer files only: a --vocab-only GGUF
    shutil.copytree(out["toy"], old)
    cfg_path = old / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = OLD_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    out["toy-old-template"] = old
    bare = work / "llama-toy-no-prefix-key"  # tokenizer_config.json without add_prefix_space, as before issue 14
    shutil.copytree(out["toy"], bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["add_prefix_space"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    out["toy-no-prefix-key"] = bare
    return out


def _gguf(found: dict[str, Any], model: Path, out: Path, *, vocab_only: bool = False) -> Path:
    cmd = [sys.executable, str(found["tree"] / "convert_hf_to_gguf.py"), str(model), "--outtype", "f32",
           "--outfile", str(out)] + (["--vocab-only"] if vocab_only else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py {model}: {proc.stderr[-3000:]}")
    return out


# convert_hf_to_gguf.py with one change: a byte-level BPE vocabulary whose pre-tokenizer hash llama.cpp does not
# know (get_vocab_base_pre raises NotImplementedError: it hashes the ids of a check text, so every toy vocabulary is
# "unknown") gets the pre-tokenizer type given here instead. Only that step is replaced; a known hash still wins.
GGUF_PINNED_PRE = r"""
import runpy, sys
tree, pre = sys.argv[1], sys.argv[2]
sys.argv = [tree + "/convert_hf_to_gguf.py", *sys.argv[3:]]
sys.path[:0] = [tree, tree + "/gguf-py"]
from conversion.base import TextModel
known = TextModel.get_vocab_base_pre
def pinned(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print(f"KEPT-PINNED-PRE {pre}", file=sys.stderr, flush=True)
        return pre
TextModel.get_vocab_base_pre = pinned
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _gguf_bpe(found: dict[str, Any], model: Path, out: Path, *, pre: str = "gpt-2") -> tuple[Path | None, str]:
    """f32 GGUF of a converted checkpoint with a tokenizers BPE; (path or None, what happened)."""
    cmd = [sys.executable, "-c", GGUF_PINNED_PRE, str(found["tree"]), pre, str(model), "--outtype", "f32",
           "--outfile", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit {proc.returncode}"]
        return None, f"failed: {last[0][:200]}"
    return out, (f"ok (pre-tokenizer hash unknown, pinned to {pre!r})" if "KEPT-PINNED-PRE" in proc.stderr
                 else "ok")


def _child(mode: str, gguf: Path, arg: Any) -> tuple[int, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(gguf), json.dumps(arg)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr.strip().splitlines()[-1:] or [""]
    return 0, json.loads(proc.stdout)


def _hf_chat_ids(model: Path) -> tuple[list[list[int]], list[str]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    ids = [list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
           for c in CONVERSATIONS]
    text = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]
    return ids, text


def _agree(want: list[list[int]], got: list[Any]) -> str:
    same = sum(isinstance(g, list) and g == w for w, g in zip(want, got))
    return f"{same}/{len(want)}"


# Tiny checkpoints of the other source families (kept.convert.tiny), converted with norm="exact": (label, family,
# config overrides, mlp_target, what llama.cpp is expected to do, more convert_checkpoint arguments). The two GPT-NeoX
# cases share one source, and so do the two OLMo cases.
FAMILY_CASES = [
    ("olmo", "olmo", {}, "runtimes", "same model (exact conversion; bias-free, full rotary)", {}),
    ("stablelm, partial rotary 0.25, qkv bias", "stablelm", {"partial_rotary_factor": 0.25, "use_qkv_bias": True},
     "runtimes", "same model (partial rotary as llama3 rope_freqs with frozen channels)", {}),
    ("gpt_neox (Pythia-like), mlp_target runtimes", "gpt_neox",
     {"use_parallel_residual": True, "hidden_act": "gelu"}, "runtimes", "same model (SiLU-gated MLP)", {}),
    ("gpt_neox (Pythia-like), mlp_target transformers", "gpt_neox",
     {"use_parallel_residual": True, "hidden_act": "gelu"}, "transformers",
     "a different model: its Llama graph applies SiLU where config.json says gelu", {}),
    ("gpt_neox, sequential residual, mlp_target transformers", "gpt_neox",
     {"use_parallel_residual": False, "hidden_act": "gelu"}, "transformers",
     "a different model: its Llama graph applies SiLU where config.json says gelu", {}),
    ("phi, mlp_target runtimes", "phi", {}, "runtimes", "same model (SiLU-gated MLP)", {}),
    ("olmo, MHA -> GQA graft: 4 KV heads merged into 2 (kv_init fit)", "olmo", {}, "runtimes",
     "same model (grouped-query attention: n_head_kv 2 from num_key_value_heads)", {"kv_heads": 2, "kv_init": "fit"}),
    # the zoo (issue 27): RMSNorm families, exact
    ("qwen2 (q/k/v biases, zero o bias, GQA)", "qwen2", {}, "runtimes", "same model (attention biases)", {}),
    ("granite (muP multipliers folded, tied head untied)", "granite", {}, "runtimes",
     "same model (multipliers folded into the weights)", {}),
    ("gemma, mlp_target runtimes ((1 + w) norms, sqrt(d) embedding)", "gemma", {}, "runtimes",
     "same model (SiLU form of its gated GELU)", {}),
    ("gemma, mlp_target transformers", "gemma", {}, "transformers",
     "a different model: its Llama graph applies SiLU where config.json says gelu_pytorch_tanh", {}),
    ("phi3 (fused qkv / gate_up, partial rotary 0.75)", "phi3", {}, "runtimes",
     "same model (partial rotary as llama3 rope_freqs with frozen channels)", {}),
    ("glm (fused gate_up, interleaved partial rotary 0.5)", "glm", {}, "runtimes",
     "same model (interleaved rotary permuted to halves; llama3 rope_freqs)", {}),
    # the layer fit's closed forms that change more than tensor values (issue 28): a final logit softcap becomes a
    # fitted temperature folded into the LM head, which unties a tied head; NoPE layers' q/k in the score's basis
    ("gemma2, layer fit (softcap -> temperature in an untied head)", "gemma2", {}, "runtimes",
     "same model (head written, tie_word_embeddings false)", {"layer_fit": True}),
    ("smollm3, layer fit (NoPE layer's q/k in the score's basis)", "smollm3", {}, "runtimes",
     "same model (q/k values only)", {"layer_fit": True}),
]
FAMILY_SEQ_LEN = 40
# kept.convert.tiny.train_bpe's default (96) is below the byte-level alphabet (256 + 3 specials): that tokenizer has
# no merges, which libllama refuses to load. The family cases train the same tokenizer with room for merges.
FAMILY_BPE_VOCAB = 320


def _tiny_checkpoint(directory: Path, family: str, **overrides: Any) -> Path:
    """kept.convert.tiny.make_checkpoint with a BPE vocabulary of FAMILY_BPE_VOCAB (so it has merges)."""
    from kept.convert.tiny import new_model, train_bpe, write_checkpoint

    vocab = train_bpe(directory, vocab_size=FAMILY_BPE_VOCAB)
    return write_checkpoint(new_model(family, vocab_size=vocab, **overrides), directory)


def cfg_vocab(model: Path) -> int:
    return int(json.loads((model / "config.json").read_text())["vocab_size"])


def _load_error(gguf: Path) -> str:
    """libllama's error line when a GGUF does not load (empty if it loads)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, "load", str(gguf), "null"], capture_output=True, text=True)
    if proc.returncode == 0:
        return ""
    errs = [ln.strip() for ln in proc.stderr.splitlines() if "error loading model" in ln]
    return errs[-1] if errs else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]


def _family_lp(model_dir: Path, seqs: list[list[int]], *, auto: bool = False) -> list[Any]:
    """transformers log-probs (float64 log_softmax of float32 logits): LlamaForCausalLM, or the source's own class."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    cls = AutoModelForCausalLM if auto else LlamaForCausalLM
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([s])).logits[0].double(), -1) for s in seqs]


def _logit_offset(source: Path) -> Any:
    """head @ final beta (+ head bias): the per-vocab logit offset a Llama cannot hold (kept.convert.ops), from the
    source's tensors, float64."""
    import torch
    from safetensors.torch import load_file

    from kept.convert.families import read_source

    family, arch, _ = read_source(source)
    sd = {k: v for f in sorted(source.glob("*.safetensors")) for k, v in load_file(f).items()}

    def get(logical: str) -> Any:
        return next(sd[n] for n in family.tensors[logical] if n in sd).double()

    head = get("embed") if arch.tied else get("head.w")
    offset = torch.zeros(head.shape[0], dtype=torch.float64)
    if arch.norm_bias:
        offset += head @ get("final.b")
    if arch.head_bias:
        offset += get("head.b")
    return offset


def _families(found: dict[str, Any], work: Path, *, quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The other source families: kept's conversion -> llama.cpp's GGUF conversion -> log-probs, llama.cpp vs
    transformers' LlamaForCausalLM on the same converted checkpoint (and, for context, vs the source's class)."""
    import torch
    from tokenizers import Tokenizer

    from kept.convert import convert_checkpoint
    from kept.convert.tiny import TEXT, make_checkpoint

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    # make_checkpoint as it is (its tokenizer has no merges): does llama.cpp take it?
    src = make_checkpoint(work / "src-olmo-default-tokenizer", "olmo")
    merges = len(json.loads((src / "tokenizer.json").read_text())["model"]["merges"])
    out = work / "llama-olmo-default-tokenizer"
    convert_checkpoint(source=src, output=out, norm="exact", fidelity_tokens=0)
    gguf, how = _gguf_bpe(found, out, work / "olmo-default-tokenizer.gguf")
    err = _load_error(gguf) if gguf is not None else "-"
    notes.append(f"kept.convert.tiny.make_checkpoint's own tokenizer (train_bpe vocab_size 96 < the 259-symbol "
                 f"byte-level alphabet: {merges} merges), olmo: llama.cpp GGUF conversion {how}; libllama "
                 + (f"refuses to load it: `{err}`" if err else "loads it")
                 + f". The family cases below therefore train the same tokenizer with vocab_size {FAMILY_BPE_VOCAB}.")
    sources: dict[tuple[str, str], Path] = {}
    tok_checked = False
    for n, (label, family, overrides, mlp_target, expect, extra) in enumerate(FAMILY_CASES):
        key = (family, json.dumps(overrides, sort_keys=True))
        if key not in sources:
            sources[key] = _tiny_checkpoint(work / f"src-{family}-{len(sources)}", family, **overrides)
        src = sources[key]
        # no family name in the directory: convert_hf_to_gguf makes it the GGUF's general.name, and libllama keys
        # token attributes on names containing "phi3"/"phi-3" (looking up "</s>", which the toy vocabulary lacks)
        out = work / f"llama-case{n}-{mlp_target}"
        convert_checkpoint(source=src, output=out, norm="exact", mlp_target=mlp_target, fidelity_tokens=0, **extra)
        conv = json.loads((out / "conversion.json").read_text())
        cfg = json.loads((out / "config.json").read_text())
        gguf, how = _gguf_bpe(found, out, work / f"case{n}-{mlp_target}.gguf")
        row = {"case": label, "exactness (kept)": conv["exactness"], "hidden_act": cfg["hidden_act"],
               "rope": cfg["rope_parameters"]["rope_type"], "KV heads": f"{cfg['num_key_value_heads']} of "
               f"{cfg['num_attention_heads']}", "llama.cpp GGUF conversion": how}
        if gguf is not None and not tok_checked:  # the pinned pre-tokenizer, checked on the module's texts
            tok = Tokenizer.from_file(str(out / "tokenizer.json"))
            rc, got = _child("tokenize_many", gguf, TEXT)
            hf = [tok.encode(t, add_special_tokens=False).ids for t in TEXT]
            same = sum(g == h for g, h in zip(got, hf)) if rc == 0 else 0
            notes.append(f"Families' tokenizer (kept.convert.tiny byte-level BPE, vocab {cfg_vocab(out)}, "
                         f"{len(json.loads((out / 'tokenizer.json').read_text())['model']['merges'])} merges; "
                         f"pre-tokenizer pinned to 'gpt-2'): "
                         f"llama_tokenize equals the tokenizers library on {same}/{len(TEXT)} of its training lines"
                         + ("" if rc == 0 else f" (llama.cpp exit {rc})") + ".")
            tok_checked = True
        vocab = cfg["vocab_size"]
        g = torch.Generator().manual_seed(0)
        seqs = torch.randint(0, vocab, (1 if quick else 2, FAMILY_SEQ_LEN), generator=g).tolist()
        ref = _family_lp(out, seqs)
        srcs = _family_lp(src, seqs, auto=True)
        off = _logit_offset(src) if conv["exactness"] != "exact" else None
        restored = ref if off is None else [torch.log_softmax(r + off, -1) for r in ref]
        row["max |Δ log p| transformers Llama (+ logit offset) vs source class"] = (
            f"{max(float((a - b).abs().max()) for a, b in zip(restored, srcs)):.2e}")
        if gguf is None:
            row["max |Δ log p| llama.cpp vs transformers Llama"] = "-"
        else:
            diffs = []
            for seq, r in zip(seqs, ref):
                rc, scores = _child("logits", gguf, seq)
                if rc != 0:
                    diffs = None
                    row["max |Δ log p| llama.cpp vs transformers Llama"] = f"llama.cpp failed (exit {rc}): {scores}"
                    break
                got = torch.log_softmax(torch.tensor(scores, dtype=torch.float64), -1)
                diffs.append(float((got - r).abs().max()))
            if diffs is not None:
                row["max |Δ log p| llama.cpp vs transformers Llama"] = f"{max(diffs):.2e}"
        row["expected of llama.cpp"] = expect
        rows.append(row)
    notes.append(f"Families: kept.convert.tiny (transformers' own class, perturbed norms and biases), "
                 f"convert_checkpoint(norm='exact', fidelity_tokens=0; the GQA case also kv_heads=2, kv_init='fit', "
                 f"the layer-fit cases layer_fit=True, each on the built-in calibration sample), llama.cpp's "
                 f"convert_hf_to_gguf.py --outtype f32, libllama forward with f32 KV cache; {len(seqs)} random sequence(s) of {FAMILY_SEQ_LEN} ids "
                 f"per case (seed 0), no BOS. 'vs source class': the converted checkpoint in transformers, with the "
                 f"per-vocabulary logit offset that stock Llama cannot hold (head @ final beta + head bias, which "
                 f"kept reports) added back, against the source in its own transformers class: float error for the "
                 f"exact classes; the approximate class (parallel residual made sequential, SiLU-gated MLP) "
                 f"measures the approximation. The llama.cpp column compares the converted checkpoint as it is, "
                 f"without any offset, in both runtimes. Output directories carry no family name: "
                 f"convert_hf_to_gguf.py writes the directory name as the GGUF's general.name, and libllama's "
                 f"vocabulary loader sets token attributes for names containing 'phi3' / 'phi-3' by looking up "
                 f"'</s>' -- absent from the toy vocabulary, so a case named after Phi-3 failed to load "
                 f"('unordered_map::at'); a real Phi-3 vocabulary has '</s>'.")
    return rows, notes


def run(*, quick: bool = False) -> dict:
    title = "llama.cpp compatibility: chat prompts, tokenizer and logits (transformers vs llama.cpp)"
    found = locate()
    if found is None:
        return {"title": title, "rows": [], "notes": "skipped: llama-cpp-python or the llama.cpp source tree is not "
                "installed (bench/requirements-llamacpp.txt)."}
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    models = _models(WORK)
    ggufs = {"toy": _gguf(found, models["toy"], WORK / "toy.gguf"),
             "toy-old-template": _gguf(found, models["toy-old-template"], WORK / "toy-old.gguf", vocab_only=True),
             "toy-no-prefix-key": _gguf(found, models["toy-no-prefix-key"], WORK / "toy-bare.gguf", vocab_only=True),
             "spm-defaults": _gguf(found, models["spm-defaults"], WORK / "spm.gguf", vocab_only=True)}
    driver = _driver(found)
    rows: list[dict[str, Any]] = []
    examples: list[str] = []
    want, want_text = _hf_chat_ids(models["toy"])

    cases = (("students' files now", "toy"), ("chat template before issue 14", "toy-old-template"),
             ("tokenizer_config.json without add_prefix_space (before issue 14)", "toy-no-prefix-key"))
    for label, key in cases:
        if driver is not None:
            proc = subprocess.run([str(driver), str(ggufs[key]), _write(WORK / "conv.json", CONVERSATIONS)],
                                  capture_output=True, text=True, check=True)
            rendered = [json.loads(line) for line in proc.stdout.splitlines()]
            for path in ("jinja", "legacy"):
                got = [r[path].get("ids") for r in rendered]
                errors = sorted({r[path]["error"] for r in rendered if "error" in r[path]})
                how = "Jinja" if path == "jinja" else "--no-jinja"
                rows.append({"case": label, "llama.cpp path": f"llama-cli/llama-server, {how}",
                             "prompts with equal ids": "-" if errors else _agree(want, got),
                             "what llama.cpp did": f"refused: {errors[0]}" if errors else
                             ("same text as transformers" if [r[path]["prompt"] for r in rendered] == want_text
                              else "rendered a different prompt")})
                if path == "legacy" and not errors and got != want:
                    examples.append(f"{label}, --no-jinja, first prompt: llama.cpp {rendered[0][path]['prompt']!r} "
                                    f"vs transformers {want_text[0]!r}")
        rc, res = _child("chat", ggufs[key], CONVERSATIONS)
        if rc == 0:
            rcs = sorted({r["c_api"].get("rc") for r in res if "rc" in r["c_api"]})
            rows.append({"case": label, "llama.cpp path": "C API llama_chat_apply_template (built-in renderers)",
                         "prompts with equal ids": "-",
                         "what llama.cpp did": f"refused (return code {rcs[0]}: no built-in renderer)" if rcs else
                         ("same text as transformers" if [r["c_api"]["prompt"] for r in res] == want_text
                          else "rendered a different prompt")})
            rows.append({"case": label, "llama.cpp path": "llama-cpp-python chat handler (Jinja2ChatFormatter)",
                         "prompts with equal ids": _agree(want, [r["handler"]["ids"] for r in res]),
                         "what llama.cpp did": "same text as transformers" if [r["handler"]["prompt"] for r in res]
                         == want_text else "rendered a different prompt"})

    from transformers import AutoTokenizer

    for name, label in (("toy", "toy-world-like tokenizer"),
                        ("toy-no-prefix-key", "same, without add_prefix_space (before issue 14)"),
                        ("spm-defaults", "SentencePiece-default tokenizer")):
        tok = AutoTokenizer.from_pretrained(models[name], trust_remote_code=False)
        conv = json.loads((models[name] / "conversion.json").read_text())
        warned = ", ".join(w["property"] for w in conv["tokenizer_warnings"]) or "none"
        results = []
        for tname, text in TEXTS.items():
            rc, got = _child("tokenize", ggufs[name], text)
            hf = tok(text, add_special_tokens=False)["input_ids"]
            results.append(f"{tname}: " + ("same ids" if rc == 0 and got == hf else "different ids" if rc == 0
                                          else f"llama.cpp aborted (exit {rc})"))
        rows.append({"case": label, "llama.cpp path": "llama_tokenize (plain text)",
                     "prompts with equal ids": f"{sum('same ids' in r for r in results)}/{len(results)}",
                     "what llama.cpp did": "; ".join(results) + f" | conversion warned: {warned}"})

    import torch
    from transformers import AutoModelForCausalLM

    ids = [int(i) for i in want[3][:48]]
    rc, scores = _child("logits", ggufs["toy"], ids)
    if rc == 0:
        model = AutoModelForCausalLM.from_pretrained(models["toy"], trust_remote_code=False, dtype=torch.float32)
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        got = torch.log_softmax(torch.tensor(scores, dtype=torch.float64), -1)
        diff = float((got - ref).abs().max())
        rows.append({"case": "exact model (attention_bias, mlp_bias)", "llama.cpp path":
                     "libllama forward, f32 GGUF and KV cache", "prompts with equal ids": "-",
                     "what llama.cpp did": f"max |log p difference| over {len(ids)} positions: {diff:.2e}"})
    tree = found["tree"].relative_to(ROOT) if found["tree"].is_relative_to(ROOT) else found["tree"]
    notes = [f"llama-cpp-python {found['version']} (built from its sdist); llama.cpp tree {tree}; chat driver "
             f"{'bench/llamacpp_chat.cpp' if driver else 'not built (no libllama-common): llama-cli rows missing'}.",
             "Equal ids = transformers `apply_chat_template(..., tokenize=True)` ids equal llama.cpp's, for the "
             f"{len(CONVERSATIONS)} conversations in the module (multi-turn, system, CJK, code with newlines)."]
    notes += examples
    fam_rows, fam_notes = _families(found, WORK, quick=quick)
    notes += fam_notes
    fam_table = _markdown(fam_rows)
    return {"title": title, "rows": rows, "family_rows": fam_rows,
            "notes": "\n".join(f"- {n}" for n in notes) + "\n\n### Other source families: log-probs, llama.cpp vs "
            "transformers\n\n" + fam_table}


def _markdown(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no rows)"


def _write(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False))
    return str(path)


if __name__ == "__main__":
    from bench.run import section

    print(section(run()))
