"""Every source family -> stock Llama, checked against transformers' own class of the family.

Tiny perturbed checkpoints (random norm gains and biases, random linear biases, a non-zero embedding mean;
:mod:`kept.convert.tiny`) written by the family's own ``save_pretrained``. For each family option and norm mapping:
the exactness class the planner decides, and the evidence for it, computed here independently of the converter's
own fidelity pass -- full-model forward passes of transformers' class of the family and of ``LlamaForCausalLM``:

* ``exact``: next-token log-probs equal within 1e-4 (float32 forward passes of two different graphs);
* ``exact up to a logit offset``: equal within 1e-4 once ``head @ beta_f + head_bias`` (from the source's own
  tensors) is added to the Llama logits;
* ``approximate``: the converter's reported KL agrees with the KL computed here (so the report measures what it
  claims), and is not zero (the divergence is real).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from test_zoo import check_exact, logit_offset, logprobs

from kept.convert import convert_checkpoint
from kept.convert.families import FAMILIES
from kept.convert.plan import APPROX, EXACT, NORMS, OFFSET
from kept.convert.tiny import make_checkpoint
from kept.errors import CheckpointError, KeptError, MappingError

# (family, config overrides, {norm: expected class}); "refused" = the mapping is refused with a reason
CASES = [
    ("olmo", {}, {"paper": APPROX, "centered": EXACT, "exact": EXACT, "fit": "refused"}),
    ("olmo", {"tie_word_embeddings": True}, {"centered": EXACT, "exact": EXACT}),
    ("olmo", {"clip_qkv": 0.05}, {"centered": APPROX, "exact": "refused"}),
    ("stablelm", {}, {"paper": APPROX, "centered": APPROX, "exact": OFFSET, "fit": APPROX}),
    ("stablelm", {"use_parallel_residual": True}, {"exact": APPROX}),
    ("stablelm", {"qk_layernorm": True}, {"centered": APPROX, "exact": "refused"}),
    ("gpt_neox", {}, {"paper": APPROX, "exact": APPROX, "fit": APPROX}),
    ("gpt_neox", {"use_parallel_residual": False}, {"centered": APPROX, "exact": OFFSET}),
    ("phi", {}, {"paper": APPROX, "exact": APPROX, "fit": APPROX}),
]


def _corpus(out: Path, *, vocab: int = 90, n_seq: int = 8, length: int = 32) -> Path:
    arr = np.random.default_rng(0).integers(3, vocab, size=(n_seq, length), dtype=np.int32)
    (out / "shards").mkdir(parents=True)
    np.save(out / "shards" / "00000.npy", arr)
    manifest = {"max_length": length, "num_sequences": n_seq, "eos_id": 2, "total_tokens": int(arr.size),
                "tokens_per_language": {"mixed": int(arr.size)}, "shards": ["shards/00000.npy"], "source": "tests"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


_logprobs, _offset = logprobs, logit_offset  # bench/bench_families.py reads the offset from here


@pytest.mark.parametrize("family,overrides,expect", CASES,
                         ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for f, o, _ in CASES])
def test_family_against_transformers(tmp_path, family, overrides, expect):
    src = make_checkpoint(tmp_path / "src", family, **overrides)
    teacher = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False).float().eval()
    assert type(teacher).__name__ == FAMILIES[family].hf_class  # the reference is the family's own class
    want = _logprobs(teacher)
    corpus = _corpus(tmp_path / "corpus")
    for norm, cls in expect.items():
        out = tmp_path / f"out-{norm}"
        if cls == "refused":
            with pytest.raises(MappingError, match="impossible|no weights") as err:
                convert_checkpoint(source=src, output=out, norm=norm, calibration=corpus, fidelity_tokens=0)
            assert "\n" not in str(err.value) and not out.exists()
            continue
        rep = convert_checkpoint(source=src, output=out, norm=norm, calibration=corpus, fidelity_tokens=64,
                                 mlp_target="transformers", fit_tokens=64)
        assert rep["family"] == family and rep["exactness"] == cls, (norm, rep["exactness"], rep["divergences"])
        conv = json.loads((out / "conversion.json").read_text())
        assert conv["exactness"] == cls and "transformers" in conv["runtimes"]
        student = LlamaForCausalLM.from_pretrained(out, trust_remote_code=False).float().eval()
        if not check_exact(rep, student, want, src):
            assert rep["kl_mean"] > 1e-6, (norm, rep["kl_mean"])
            assert rep["divergences"]
        if cls != EXACT:  # the reported KL is what transformers' own class and Llama disagree by
            direct = _logprobs(student)
            kl = (want.exp() * (want - direct)).sum(-1).mean().item()
            assert kl > 0
        tok = AutoTokenizer.from_pretrained(out)
        assert tok.chat_template == AutoTokenizer.from_pretrained(src).chat_template is not None  # carried unchanged


def test_gelu_target_runtimes_is_silu_and_close(tmp_path):
    """Non-gated GELU MLP: 'runtimes' writes a SiLU-gated Llama (what vLLM and llama.cpp compute), approximate
    but close; 'transformers' keeps GELU, exact up to the final-norm offset."""
    src = make_checkpoint(tmp_path / "src", "gpt_neox", use_parallel_residual=False)
    want = _logprobs(AutoModelForCausalLM.from_pretrained(src).float().eval())
    off = _offset(src)
    for target, act in (("runtimes", "silu"), ("transformers", "gelu")):
        out = tmp_path / target
        rep = convert_checkpoint(source=src, output=out, norm="exact", mlp_target=target, fidelity_tokens=32)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["hidden_act"] == act and cfg["mlp_bias"] is True
        got = _logprobs(LlamaForCausalLM.from_pretrained(out).float().eval(), off)
        err = (got - want).abs().max().item()
        if target == "transformers":
            assert err < 1e-4 and rep["exactness"] == OFFSET
        else:
            assert 1e-6 < err < 0.1 and rep["exactness"] == APPROX
            runtimes = json.loads((out / "conversion.json").read_text())["runtimes"]
            assert "loads it" in runtimes["vLLM"]
    runtimes = json.loads((tmp_path / "transformers" / "conversion.json").read_text())["runtimes"]
    assert "refuses" in runtimes["vLLM"] and "SiLU" in runtimes["llama.cpp"]


def test_partial_rotary_config_reaches_runtimes(tmp_path):
    """A partial-rotary source becomes a llama3 RoPE schedule whose frozen channels sit past the source's
    longest rotated wavelength; the legacy top-level keys llama.cpp reads are written too."""
    src = make_checkpoint(tmp_path / "src", "phi")
    convert_checkpoint(source=src, output=tmp_path / "out", norm="exact", fidelity_tokens=0)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    rope = cfg["rope_parameters"]
    assert rope["rope_type"] == "llama3" and cfg["rope_scaling"]["rope_type"] == "llama3"
    assert cfg["original_max_position_embeddings"] == rope["original_max_position_embeddings"] < 128
    d, r = 16, 8  # head_dim 64/4, partial_rotary_factor 0.5
    assert rope["rope_theta"] == pytest.approx(10000.0 ** (d / r))
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from kept.convert.plan import LEGACY_KEYS

    inv = LlamaRotaryEmbedding(LlamaConfig(**{k: v for k, v in cfg.items() if k not in LEGACY_KEYS})).inv_freq
    source = 1.0 / 10000.0 ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    torch.testing.assert_close(inv[: r // 2].double(), source, rtol=1e-6, atol=0)  # rotated: the source's
    assert float(inv[r // 2 :].max()) < 1e-9 * float(source.min())  # the rest: frozen


def test_unknown_family_refused_in_one_line(tmp_path):
    src = make_checkpoint(tmp_path / "src", "olmo")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        convert_checkpoint(source=src, output=tmp_path / "out", norm="exact")
    msg = str(err.value)
    assert "'mamba'" in msg and all(f in msg for f in FAMILIES) and "\n" not in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["olmo", "stablelm", "gpt_neox", "phi"])
def test_bad_tensors_named_nothing_written(tmp_path, family):
    """A missing tensor, a misshapen one and an unknown one: one line naming it, nothing written."""
    from safetensors.torch import save_file

    src = make_checkpoint(tmp_path / "src", family)
    state = load_file(src / "model.safetensors")
    victim = next(k for k in state if ".1." in k and k.endswith("weight") and state[k].dim() == 2)
    cases = {
        "missing": {k: v for k, v in state.items() if k != victim},
        "shape": {**state, victim: state[victim][:-1].contiguous()},
        "unknown": {**state, "model.layers.0.extra.weight": torch.zeros(3)},
    }
    for what, tensors in cases.items():
        save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
        out = tmp_path / f"out-{what}"
        with pytest.raises(KeptError) as err:
            convert_checkpoint(source=src, output=out, norm="centered", fidelity_tokens=0)
        name = "model.layers.0.extra.weight" if what == "unknown" else victim
        assert name in str(err.value) and "\n" not in str(err.value), (what, str(err.value))
        assert not out.exists() and not list(tmp_path.glob("out-*"))


PUBLISHED = sorted((Path(__file__).parent / "data" / "published_configs").glob("*.json"))
# Families without a published config.json in tests/data: transformers' own config class defaults, each of which
# its docstring describes as one published checkpoint's configuration (e.g. Qwen3Config: Qwen3-8B), full size.
DEFAULT_SIZED = sorted(f for f, fam in FAMILIES.items() if fam.runtime.model_class is None and f not in
                       {"orion", "olmo", "stablelm", "gpt_neox", "phi", "qwen2", "gemma2", "phi3", "mistral", "falcon"})
INTERNLM2_7B = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "vocab_size": 92544,
                "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "bias": False,
                "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bos_token_id": 1,
                "eos_token_id": 2, "pad_token_id": 2}  # InternLM2-7B's sizes as a public table lists them


def _raw_config(case: str | Path) -> tuple[dict, Path]:
    if isinstance(case, Path):
        return {k: v for k, v in json.loads(case.read_text()).items() if not k.startswith("_")}, case
    if case == "internlm2":
        return dict(INTERNLM2_7B), Path("internlm2-7b")
    from transformers import AutoConfig

    raw = AutoConfig.for_model(FAMILIES[case].model_types[0]).to_dict()
    if "num_attention_heads" in raw:  # classes that need them (their published configs set them)
        raw["head_dim"] = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        if "num_key_value_heads" in raw:
            raw["num_key_value_heads"] = raw["num_key_value_heads"] or raw["num_attention_heads"]
    return {k: v for k, v in raw.items() if k not in ("transformers_version", "dtype")}, Path(f"{case}-default")


def _own_shapes(family, raw: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the family's own class (transformers', or kept's port) on the meta device."""
    from kept.convert.plan import expected_shapes

    config = family.teacher_config(raw, path)
    if family.runtime.model_class is None:
        return expected_shapes(config)
    import importlib

    module, name = family.runtime.model_class.split(":")
    with torch.device("meta"):
        model = getattr(importlib.import_module(module), name)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


CONFIG_CASES = PUBLISHED + DEFAULT_SIZED + ["internlm2"]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.stem if isinstance(c, Path) else f"{c}-default"
                                                    for c in CONFIG_CASES])
def test_published_config_key_map_on_meta(case):
    """Full-size key maps and config translations of published checkpoints (config.json values as published;
    where each was taken from is in its ``_source`` key; for the other families transformers' own config defaults,
    which describe one published checkpoint each), on the meta device: the source names and shapes are exactly
    those of the family's own class, and every mapping allowed for the family writes exactly the tensors of the
    stock Llama of the config it writes, reading, fitting or dropping every source tensor."""
    import re

    from transformers import LlamaConfig

    from kept.convert.families import detect
    from kept.convert.plan import LEGACY_KEYS, MLP_TARGETS, check_mapping, expected_shapes, llama_shapes
    from kept.convert.plan import plan_conversion, source_shapes

    raw, path = _raw_config(case)
    family = detect(raw, path)
    arch = family.read_arch(raw, path)
    source = source_shapes(family, arch)
    own = _own_shapes(family, raw, path)
    if arch.tied:  # transformers lists the tied head (the embedding's Parameter); checkpoints do not store it
        own.pop(family.tensors["head.w"][-1], None)
    alias = {t: ts[-1] for ts in family.tensors.values() for t in ts[:1] if len(ts) > 1}  # hub name -> transformers 5

    def runtime_name(name: str) -> str:
        name = alias.get(name, name)
        for rx, repl in family.runtime.renames:
            name = re.sub(rx, repl, name)
        return name

    dropped = [re.compile("^" + re.escape(t).replace(r"\{i\}", r"\d+").replace(r"\{h\}", r"\d+") + "$")
               for t in family.dropped]
    extra = {k: v for k, v in own.items() if any(rx.match(k) for rx in dropped)}  # e.g. qk_layernorm: dropped
    own = {k: v for k, v in own.items() if k not in extra}
    assert {runtime_name(k): v for k, v in source.items()} == own
    source.update(extra)  # the checkpoint holds them too (the family's own names)
    if arch.hidden_size % arch.num_heads:  # transformers' LlamaConfig refuses it: so must the planner, in one line
        with pytest.raises(MappingError, match="not divisible by num_attention_heads"):
            check_mapping(family, arch, norm="exact", mlp_target="transformers", where=str(path))
        return
    ran, seen = 0, {}
    for norm in NORMS:
        for target in MLP_TARGETS:
            try:
                check_mapping(family, arch, norm=norm, mlp_target=target, where=str(path))
            except MappingError:
                continue
            plan = plan_conversion(family=family, arch=arch, source_shapes=source, norm=norm, dtype="bfloat16",
                                   mlp_target=target)
            c = plan.llama_config
            hf = LlamaConfig(**{k: v for k, v in c.items() if k not in LEGACY_KEYS})
            assert {k: v for k, v in c.items() if k not in LEGACY_KEYS} == json.loads(hf.to_json_string())
            target_shapes = llama_shapes(c)
            key = hf.to_json_string()
            if key not in seen:  # LlamaForCausalLM on meta, once per distinct config
                seen[key] = expected_shapes(hf)
                if c["tie_word_embeddings"]:
                    seen[key].pop("lm_head.weight")
            assert target_shapes == seen[key]
            assert {s.target: s.shape for s in plan.steps} == target_shapes
            read = {n for s in plan.steps for n in s.sources} | set(plan.fit_reads)
            assert read | {n for n, _ in plan.dropped} == set(source) and not read & {n for n, _ in plan.dropped}
            assert (c["vocab_size"], c["hidden_size"], c["num_hidden_layers"]) == (
                arch.vocab_size, arch.hidden_size, arch.num_layers)
            ran += 1
    assert ran >= 1


def test_on_disk_layouts_give_the_same_output(tmp_path):
    """One GPT-NeoX model as a single safetensors file, as sharded safetensors (save_pretrained's index) and as
    sharded pickled .bin files (``embed_out`` named as the hub's Pythia checkpoints): identical weights out."""
    from kept.convert.tiny import new_model, train_bpe, write_checkpoint

    vocab = train_bpe(tmp_path / "tok")
    model = new_model("gpt_neox", vocab_size=vocab)
    single = write_checkpoint(model, tmp_path / "single", tokenizer_dir=tmp_path / "tok")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    state = {("embed_out.weight" if k == "lm_head.weight" else k): v.contiguous()
             for k, v in load_file(single / "model.safetensors").items()}
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, pickled / fname)
        weight_map.update({k: fname for k in part})
    (pickled / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for d in (sharded, pickled):
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (d / name).write_bytes((single / name).read_bytes())
    outs = {}
    for d in (single, sharded, pickled):
        out = tmp_path / f"out-{d.name}"
        convert_checkpoint(source=d, output=out, norm="exact", fidelity_tokens=16)
        outs[d.name] = load_file(next(out.glob("*.safetensors")))
    for name in ("sharded", "pickled"):
        assert outs[name].keys() == outs["single"].keys()
        for k, v in outs["single"].items():
            assert torch.equal(outs[name][k], v), (name, k)


def test_always_refused_table_matches_the_converter():
    """kept.smk.ALWAYS_REFUSED (what the DAG refuses before any job) is exactly the (family, mapping) pairs the
    converter refuses on every config of the family we hold (published, transformers' defaults, the tiny test
    configs): the dry run's check cannot drift from the converter's, in either direction."""
    from kept.convert.families import detect
    from kept.convert.plan import check_mapping
    from kept.convert.tiny import TINY
    from kept.smk import ALWAYS_REFUSED

    tiny = [({**cfg, "model_type": FAMILIES[f].model_types[0], "vocab_size": 100}, Path(f"tiny-{f}"))
            for f, cfg in TINY.items()]
    tiny.append(({**tiny[[p.name for _, p in tiny].index("tiny-persimmon")][0], "qk_layernorm": False},
                 Path("tiny-persimmon-no-qk")))
    refused: dict[str, dict[str, list[bool]]] = {}
    for raw, path in [_raw_config(c) for c in CONFIG_CASES] + tiny:
        family = detect(raw, path)
        arch = family.read_arch(raw, path)
        for norm in NORMS:
            try:
                check_mapping(family, arch, norm=norm, mlp_target="transformers", where=str(path))
                refused.setdefault(family.name, {}).setdefault(norm, []).append(False)
            except MappingError:
                refused.setdefault(family.name, {}).setdefault(norm, []).append(True)
    always = {(f, n) for f, by_norm in refused.items() for n, seen in by_norm.items() if all(seen)}
    assert always == {(f, n) for f, by_norm in ALWAYS_REFUSED.items() for n in by_norm}
    assert ("olmo", "fit") in always  # the case the families config met
