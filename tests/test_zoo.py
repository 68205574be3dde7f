"""The zoo: every dense decoder family of the pinned transformers (and InternLM2 / Baichuan2-7B through plain-PyTorch
ports of their published modeling code) -> stock Llama with the defaults ``kept convert SRC OUT`` uses, checked
against the family's own class on tiny perturbed checkpoints (random norm gains and biases, non-trivial
multipliers, GQA, partial / interleaved rotary where the family has them; :mod:`kept.convert.tiny`):

* the exactness class the planner decides, and what stock Llama cannot hold (``divergences``);
* ``exact``: next-token log-probs within 1e-4 of the family's class (float32 forward passes of different graphs);
* ``exact up to a logit offset``: within 1e-4 once ``head @ beta_f (+ head bias)`` is added back;
* ``approximate``: the divergence is real (KL > 0 here, and in the converter's own fidelity report).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from kept.convert import convert_checkpoint
from kept.convert.families import FAMILIES
from kept.convert.plan import APPROX, EXACT, OFFSET
from kept.convert.tiny import make_checkpoint, new_model, train_bpe, write_checkpoint
from kept.errors import CheckpointError, MappingError

IDS = torch.randint(3, 90, (2, 20), generator=torch.Generator().manual_seed(1))

# (family, config overrides, class under the defaults, divergent modules expected)
ZOO = [
    ("llama", {}, EXACT, set()),
    ("internlm3", {}, EXACT, set()),
    ("mistral", {}, EXACT, set()),
    ("ministral", {}, EXACT, set()),
    ("qwen2", {}, EXACT, set()),
    ("qwen3", {}, APPROX, {"attention"}),
    ("phi3", {}, EXACT, set()),
    ("gemma", {}, EXACT, set()),
    ("gemma2", {}, APPROX, {"attention", "mlp", "head"}),
    ("gemma3_text", {}, APPROX, {"attention", "mlp", "rope"}),
    ("vaultgemma", {}, APPROX, {"attention", "head"}),
    ("granite", {}, EXACT, set()),
    ("hyperclovax", {}, APPROX, {"attention", "mlp"}),
    ("starcoder2", {}, OFFSET, set()),
    ("nemotron", {}, OFFSET, set()),
    ("falcon", {}, APPROX, {"residual"}),  # Falcon-7B: multi-query [q | k | v], one shared LayerNorm, parallel
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, APPROX, {"residual"}),  # 40B: grouped
    ("falcon", {"multi_query": False, "parallel_attn": False}, OFFSET, set()),  # per-head [q, k, v], sequential
    ("gptj", {}, APPROX, {"residual"}),
    ("cohere", {}, APPROX, {"residual"}),
    ("cohere2", {}, APPROX, {"residual", "attention", "rope"}),
    ("olmo2", {}, APPROX, {"norm", "attention", "mlp"}),
    ("olmo3", {}, APPROX, {"norm", "attention", "mlp"}),
    ("persimmon", {}, APPROX, {"norm", "attention"}),  # qk_layernorm: 'exact' refused, the default is 'centered'
    ("persimmon", {"qk_layernorm": False}, OFFSET, set()),
    ("exaone", {}, EXACT, set()),
    ("exaone4", {}, APPROX, {"norm", "attention", "mlp", "rope"}),
    ("helium", {}, EXACT, set()),
    ("seed_oss", {}, EXACT, set()),
    ("arcee", {}, EXACT, set()),
    ("smollm3", {}, APPROX, {"rope"}),
    ("glm", {}, EXACT, set()),
    ("glm4", {}, APPROX, {"attention", "mlp"}),
    ("apertus", {}, APPROX, {"attention"}),
    ("hunyuan_v1_dense", {}, APPROX, {"attention"}),
    ("ernie4_5", {}, EXACT, set()),
    ("internlm2", {}, EXACT, set()),
    ("baichuan", {}, EXACT, set()),
]


def reference(src: Path) -> torch.nn.Module:
    """The family's own class: transformers' (``trust_remote_code=False``), or kept's port of remote code."""
    family = FAMILIES[json.loads((src / "config.json").read_text())["model_type"]]
    if family.runtime.model_class is not None:
        import importlib

        module, name = family.runtime.model_class.split(":")
        return getattr(importlib.import_module(module), name).from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False).float().eval()
    assert type(model).__name__ == family.hf_class  # the reference is the family's own class
    return model


def logprobs(model: torch.nn.Module, offset: torch.Tensor | float = 0.0) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(IDS).logits.double() + offset, -1)


def logit_offset(src: Path) -> torch.Tensor:
    """head @ beta_f + head bias, from the source's own tensors (independent of the converter)."""
    family = FAMILIES[json.loads((src / "config.json").read_text())["model_type"]]
    state = load_file(src / "model.safetensors")
    t = {k: v[0] for k, v in family.tensors.items()}
    head = state.get(t.get("head.w"), state[t["embed"]])
    offset = head.double() @ state[t["final.b"]].double() if t.get("final.b") in state else 0.0
    return offset + (state[t["head.b"]].double() if t.get("head.b") in state else 0.0)


def check_exact(rep: dict, student: torch.nn.Module, want: torch.Tensor, src: Path) -> bool:
    """The evidence of an exact class (log-probs within 1e-4, with the offset added back for 'exact up to a logit
    offset'); False for 'approximate' (the caller checks what it expects of that)."""
    if rep["exactness"] == EXACT:
        torch.testing.assert_close(logprobs(student), want, atol=1e-4, rtol=0)
        assert rep["max_abs_dlogit"] < 1e-4
    elif rep["exactness"] == OFFSET:
        torch.testing.assert_close(logprobs(student, logit_offset(src)), want, atol=1e-4, rtol=0)
        assert rep["offset_corrected"]["max_abs_dlogit"] < 1e-4
        assert rep["final_norm_logit_offset_norm"] > 1e-2  # the offset is real (perturbed beta)
    return rep["exactness"] != APPROX


@pytest.mark.parametrize("family,overrides,cls,modules", ZOO, ids=[
    f"{f}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for f, o, _, _ in ZOO])
def test_zoo_defaults_against_the_family_class(tmp_path, family, overrides, cls, modules):
    src = make_checkpoint(tmp_path / "src", family, **overrides)
    want = logprobs(reference(src))
    out = tmp_path / "out"
    rep = convert_checkpoint(source=src, output=out, fidelity_tokens=32)  # the defaults of `kept convert`
    assert rep["exactness"] == cls, (rep["norm"], rep["divergences"])
    assert {d["module"] for d in rep["divergences"]} == modules
    conv = json.loads((out / "conversion.json").read_text())
    assert conv["exactness"] == cls and conv["norm"] == rep["norm"] and conv["family"] == family
    student = LlamaForCausalLM.from_pretrained(out, trust_remote_code=False).float().eval()
    if not check_exact(rep, student, want, src):
        got = logprobs(student)
        assert (want.exp() * (want - got)).sum(-1).mean().item() > 1e-9 and rep["kl_mean"] > 0
    tok = AutoTokenizer.from_pretrained(out)
    if (src / "tokenizer_config.json").is_file() and "chat_template" in (src / "tokenizer_config.json").read_text():
        assert tok.chat_template and conv["chat_template"] == "source"  # the source's own template, carried


def test_runtimes_target_and_what_each_runtime_computes(tmp_path):
    """Gemma's gated GELU: the default keeps it (exact, transformers only; the card and conversion.json say vLLM
    refuses it and llama.cpp would compute SiLU); mlp_target 'runtimes' writes the SiLU form (approximate)."""
    src = make_checkpoint(tmp_path / "src", "gemma")
    want = logprobs(reference(src))
    for target, act, cls in ((None, "gelu_pytorch_tanh", EXACT), ("runtimes", "silu", APPROX)):
        out = tmp_path / str(target)
        rep = convert_checkpoint(source=src, output=out, mlp_target=target, fidelity_tokens=0)
        cfg = json.loads((out / "config.json").read_text())
        runtimes = json.loads((out / "conversion.json").read_text())["runtimes"]
        assert cfg["hidden_act"] == act and rep["exactness"] == cls
        err = (logprobs(LlamaForCausalLM.from_pretrained(out).float().eval()) - want).abs().max().item()
        assert (err < 1e-4) if cls == EXACT else (1e-5 < err < 0.5)
        assert ("refuses" in runtimes["vLLM"]) == (target is None)
        assert runtimes["llama.cpp"] in (out / "README.md").read_text()  # the card says what each runtime does
    with pytest.raises(MappingError, match="relu2.*no SiLU form"):
        src2 = make_checkpoint(tmp_path / "nemo", "nemotron")
        convert_checkpoint(source=src2, output=tmp_path / "nemo-out", mlp_target="runtimes", fidelity_tokens=0)
    assert not (tmp_path / "nemo-out").exists()


ROPE = [  # (family, overrides): every scaling Llama computes, with full and with partial rotary
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
               "max_position_embeddings": 16}),
    ("qwen2", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                   "original_max_position_embeddings": 32}}),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                   "rope_theta": 500000.0}}),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                  "short_factor": [1.0 + 0.1 * j for j in range(6)],
                                  "long_factor": [2.0 + 0.5 * j for j in range(6)]},
              "original_max_position_embeddings": 16, "max_position_embeddings": 128}),
    ("gpt_neox", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.25}, "use_parallel_residual": False}),
    ("glm", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.5, "original_max_position_embeddings": 32}}),
]


@pytest.mark.parametrize("family,overrides", ROPE, ids=[f"{f}-{o['rope_parameters']['rope_type']}" for f, o in ROPE])
def test_rope_scaling_carries_over(tmp_path, family, overrides):
    """The source's RoPE scaling reaches Llama: the full-rotary kinds as they are, partial rotary + scaling as
    Llama's longrope over the permuted channels. Checked past the original context (20 tokens > 16) and, for the
    dynamic kinds, past max_position_embeddings, where the scaled frequencies differ from plain RoPE."""
    src = make_checkpoint(tmp_path / "src", family, **overrides)
    ref = reference(src)
    rep = convert_checkpoint(source=src, output=tmp_path / "out", fidelity_tokens=0)
    assert not [d for d in rep["divergences"] if d["module"] == "rope"]
    student = LlamaForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    offset = logit_offset(src) if rep["exactness"] == OFFSET else 0.0
    torch.testing.assert_close(logprobs(student, offset), logprobs(ref), atol=1e-4, rtol=0)
    arch = FAMILIES[family].read_arch(json.loads((src / "config.json").read_text()), src)
    got = json.loads((tmp_path / "out" / "config.json").read_text())["rope_parameters"]["rope_type"]
    kind = overrides["rope_parameters"]["rope_type"]
    assert got == (kind if arch.rotary_dim == arch.head_dim else "longrope")


def test_fold_fit_is_the_least_squares_scale(tmp_path):
    """A norm stock Llama cannot hold (Qwen3's q norm) becomes s = E[u y] / E[u^2] per head channel, u and y the
    norm's input and output on the source's own activations: computed here independently with transformers'
    model and forward hooks, against the converter's fit."""
    from kept.convert.plan import FitSite
    from kept.convert.stream import fit_sites

    src = make_checkpoint(tmp_path / "src", "qwen3")
    model = reference(src)
    seen = {}
    hook = model.model.layers[1].self_attn.q_norm.register_forward_hook(
        lambda m, inp, out: seen.update(u=inp[0].double(), y=out.double()))
    with torch.no_grad():
        model(IDS)
    hook.remove()
    u, y = seen["u"], seen["y"]  # (B, T, H, hd)
    want = ((u * y).sum((0, 1)) / (u * u).sum((0, 1))).reshape(-1)
    got = fit_sites(teacher=src, batches=[IDS], sites=[FitSite("s", "diag", 1, "self_attn.q_norm")])["s"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_fitted_scales_beat_dropping_the_norms(tmp_path, monkeypatch):
    """The fitted per-channel scales that stand in for Qwen3's q/k norms bring the converted model much closer to
    the source than dropping the norms (a scale of 1) would."""
    from kept.convert import stream

    src = make_checkpoint(tmp_path / "src", "qwen3")
    want = logprobs(reference(src))

    def kl(out: Path) -> float:
        got = logprobs(LlamaForCausalLM.from_pretrained(out).float().eval())
        return (want.exp() * (want - got)).sum(-1).mean().item()

    convert_checkpoint(source=src, output=tmp_path / "fit", fidelity_tokens=0)
    real = stream.fit_sites
    monkeypatch.setattr(stream, "fit_sites", lambda **kw: {k: torch.ones_like(v) for k, v in real(**kw).items()})
    convert_checkpoint(source=src, output=tmp_path / "dropped", fidelity_tokens=0)
    assert kl(tmp_path / "fit") < kl(tmp_path / "dropped") / 5


def test_remote_code_layouts_split_per_group(tmp_path):
    """InternLM2's grouped wqkv split per KV group is exact; splitting it contiguously ([q | k | v], the old llamafy
    mistake) gives another model -- the check that the test above can tell the two apart."""
    from kept.convert.plan import head_offsets

    src = make_checkpoint(tmp_path / "src", "internlm2")
    want = logprobs(reference(src))
    convert_checkpoint(source=src, output=tmp_path / "out", fidelity_tokens=0)
    state = load_file(tmp_path / "out" / "model-00001-of-00001.safetensors")
    wqkv = load_file(src / "model.safetensors")["model.layers.0.attention.wqkv.weight"]
    arch = FAMILIES["internlm2"].read_arch(json.loads((src / "config.json").read_text()), src)
    assert head_offsets(arch)["k"] == [2 * 16, 6 * 16]  # [q q k v | q q k v]: 2 q heads per KV head
    torch.testing.assert_close(state["model.layers.0.self_attn.k_proj.weight"][:16], wqkv[32:48])
    contiguous = dict(state)
    q, k = 4 * 16, 2 * 16
    contiguous["model.layers.0.self_attn.q_proj.weight"] = wqkv[:q]
    contiguous["model.layers.0.self_attn.k_proj.weight"] = wqkv[q : q + k]
    student = LlamaForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    torch.testing.assert_close(logprobs(student), want, atol=1e-4, rtol=0)
    student.load_state_dict(contiguous, strict=False)
    assert (logprobs(student) - want).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", ["gpt2", "bloom", "opt", "gpt_neo"])
def test_position_families_refused_with_the_reason(tmp_path, model_type):
    vocab = train_bpe(tmp_path / "src")
    write_checkpoint(new_model("llama", vocab_size=vocab), tmp_path / "src")
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
    with pytest.raises(CheckpointError, match="cannot be converted") as err:
        convert_checkpoint(source=tmp_path / "src", output=tmp_path / "out")
    assert "\n" not in str(err.value) and model_type in str(err.value) and not (tmp_path / "out").exists()


def test_rms_sources_take_one_mapping(tmp_path):
    """An RMSNorm source has no LayerNorm to map: 'exact' (= 'paper': the gains copied) is its mapping; 'centered'
    and 'fit' are refused in one line naming the family."""
    src = make_checkpoint(tmp_path / "src", "qwen2")
    for norm in ("centered", "fit"):
        with pytest.raises(MappingError, match="RMSNorm already") as err:
            convert_checkpoint(source=src, output=tmp_path / norm, norm=norm, fidelity_tokens=0)
        assert "\n" not in str(err.value) and "qwen2" in str(err.value) and not (tmp_path / norm).exists()
    paper = convert_checkpoint(source=src, output=tmp_path / "paper", norm="paper", fidelity_tokens=0)
    exact = convert_checkpoint(source=src, output=tmp_path / "exact", norm="exact", fidelity_tokens=0)
    assert paper["exactness"] == exact["exactness"] == EXACT
    a, b = (load_file(tmp_path / n / "model-00001-of-00001.safetensors") for n in ("paper", "exact"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_chat_model_renders_its_template_and_ends_turns_on_its_own_token(tmp_path):
    """A remote-code chat source with only a SentencePiece tokenizer (InternLM2-chat's layout): the converted model's
    stock tokenizer renders the source's own template with its specials whole, and generation stops on the source's
    own end-of-turn ids (generation_config.json's eos_token_id list, carried over)."""
    from kept.convert.tiny import SP_SPECIALS

    src = make_checkpoint(tmp_path / "src", "internlm2")
    im_end = json.loads((src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    end_id = next(int(i) for i, t in im_end.items() if t["content"] == "<|im_end|>")
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, end_id], "bos_token_id": 1}))
    convert_checkpoint(source=src, output=tmp_path / "out", fidelity_tokens=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tok.apply_chat_template([{"role": "user", "content": "Seoul?"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|im_start|>" and pieces.count("<|im_start|>") == 2 and pieces.count("<|im_end|>") == 1
    starts = [i for i, p in enumerate(pieces) if p == "<|im_start|>"]
    assert starts[0] == 0 and starts[0] < pieces.index("<|im_end|>") < starts[1]  # user turn closed, assistant opened
    assert set(SP_SPECIALS) <= {t.content for t in tok.added_tokens_decoder.values() if t.special}  # kept special
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, end_id]


def test_fused_row_blocks_are_copied_by_the_kernel(tmp_path, caplog):
    """Phi-3 with full rotary: q, k and v are contiguous row blocks of qkv_proj, gate and up of gate_up_proj, so
    every target is a byte span of the source -- copied file to file (no arithmetic), and exact."""
    import logging

    src = make_checkpoint(tmp_path / "src", "phi3", partial_rotary_factor=1.0)
    with caplog.at_level(logging.INFO, logger="kept.convert.writer"):
        rep = convert_checkpoint(source=src, output=tmp_path / "out", fidelity_tokens=0)
    assert rep["exactness"] == EXACT
    assert any(r.getMessage().endswith("copied as stored, 0 computed") for r in caplog.records), caplog.text
    student = LlamaForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    torch.testing.assert_close(logprobs(student), logprobs(reference(src)), atol=1e-4, rtol=0)
