"""Conversion Orion -> stock Llama under every norm mapping, on tiny checkpoints in the hub's on-disk format
(two pickled .bin shards + index + tokenizer.model) with large LayerNorm beta and non-zero-mean embeddings.
Tolerances: log-probs within 1e-4 in float32 where a mapping is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_orion import make_corpus, make_orion_checkpoint, train_sp
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM

from kept.checkpoint import TensorReader
from kept.convert import convert_checkpoint, parse_size
from kept.convert.families import FAMILIES
from kept.convert.plan import LEGACY_KEYS, NORMS, expected_shapes, llama_shapes, plan_conversion, source_shapes
from kept.orion import load_teacher, stablelm_config

TOL = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    sp = train_sp(root / "sp.model", byte_fallback=True)
    src = make_orion_checkpoint(root / "orion", sp_model=sp, beta_scale=0.5, emb_mean=0.5)
    corpus = make_corpus(root / "corpus", sp_model=sp, n_seq=8, max_length=32)
    outs, reports = {}, {}
    for norm in NORMS:
        outs[norm] = root / f"init-{norm}"
        reports[norm] = convert_checkpoint(source=src, output=outs[norm], norm=norm, calibration=corpus,
                                           fidelity_tokens=64, fit_tokens=128)
    return {"root": root, "sp": sp, "src": src, "corpus": corpus, "outs": outs, "reports": reports}


def _ids(vocab: int, seed: int = 0, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logprobs(model, ids, offset=None):
    with torch.no_grad():
        z = model(ids).logits.double()
    if offset is not None:
        z = z + offset
    return torch.log_softmax(z, -1)


def _source(src):
    with TensorReader(src) as r:
        return {n: r.get(n) for n in r.names()}


@pytest.mark.parametrize("norm", NORMS)
def test_output_loads_as_stock_llama(world, norm):
    out = world["outs"][norm]
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert type(model) is LlamaForCausalLM
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["attention_bias"] is (norm == "exact") and cfg["mlp_bias"] is (norm == "exact")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    conv = json.loads((out / "conversion.json").read_text())
    assert conv["norm"] == norm and conv["centered"] is (norm in ("centered", "exact"))
    assert conv["dtype"] == "float32" and conv["source"] == str(world["src"])
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    assert not list(out.parent.glob(".tmp-*")), "atomic_dir left a temporary directory"


def test_exact_matches_teacher_up_to_final_norm_offset(world):
    """exact: student log-probs + lm_head·beta_f == teacher log-probs within 1e-4 (float32); without the
    offset they differ, so the offset is the one residual error."""
    src = _source(world["src"])
    teacher = load_teacher(world["src"], dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(world["outs"]["exact"], trust_remote_code=False).eval()
    ids = _ids(teacher.config.vocab_size)
    offset = (src["lm_head.weight"].double() @ src["model.norm.bias"].double())
    want = _logprobs(teacher, ids)
    torch.testing.assert_close(_logprobs(student, ids, offset), want, atol=TOL, rtol=0)
    assert (_logprobs(student, ids) - want).abs().max() > 1e-2
    rep = world["reports"]["exact"]
    assert rep["final_norm_logit_offset_norm"] == pytest.approx(float(offset.norm()), rel=1e-9)
    assert max(rep["layer_rel_err"]) < 1e-5  # the centred stream is reproduced at every slot
    assert rep["offset_corrected"]["kl_mean"] < 1e-9 and rep["offset_corrected"]["top1_agreement"] == 1.0
    assert rep["kl_mean"] > 1e-4  # the offset itself is visible in the raw metrics


def test_centered_equals_teacher_when_beta_is_zero(tmp_path, world):
    """centered with all beta = 0 is exact (the embedding has non-zero-mean rows, so centring is doing work:
    the paper mapping of the same checkpoint is not exact)."""
    src = make_orion_checkpoint(tmp_path / "orion0", sp_model=world["sp"], beta_scale=0.0, emb_mean=1.0, seed=3)
    teacher = load_teacher(src, dtype=torch.float32)
    ids = _ids(teacher.config.vocab_size, seed=1)
    want = _logprobs(teacher, ids)
    for norm, exact in (("centered", True), ("paper", False)):
        out = tmp_path / norm
        convert_checkpoint(source=src, output=out, norm=norm, fidelity_tokens=0)
        got = _logprobs(AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval(), ids)
        if exact:
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        else:
            assert (got - want).abs().max() > 1e-2


def test_paper_copies_gamma_and_has_no_biases(world):
    src = _source(world["src"])
    out = world["outs"]["paper"]
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    sd = model.state_dict()
    assert not [k for k in sd if k.endswith(".bias")]
    for k, v in sd.items():
        assert torch.equal(v, src[k]), k  # NPM copies and g = gamma: every tensor is the source tensor


def test_centered_mapping_arithmetic(world):
    """centered: embedding rows and o/down_proj outputs have zero mean; the rest is copied."""
    src = _source(world["src"])
    sd = AutoModelForCausalLM.from_pretrained(world["outs"]["centered"], trust_remote_code=False).state_dict()
    emb = src["model.embed_tokens.weight"].double()
    torch.testing.assert_close(sd["model.embed_tokens.weight"].double(), emb - emb.mean(1, keepdim=True),
                               atol=1e-6, rtol=0)
    for k in ("model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        w = src[k].double()
        torch.testing.assert_close(sd[k].double(), w - w.mean(0), atol=1e-6, rtol=0)
        assert sd[k].double().mean(0).abs().max() < 1e-6
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.input_layernorm.weight", "lm_head.weight"):
        assert torch.equal(sd[k], src[k])


def test_bf16_arithmetic_is_float64_rounded_but_at_rounding_boundaries(tmp_path, world):
    """bfloat16 outputs: the centring and folding run in float32 (kept.convert.arith_dtype), which has 16 more
    mantissa bits than bfloat16. Every element is one of the two bfloat16 neighbours of the exact (float64)
    result, and equals the float64 path's correctly rounded value except within a hair of a rounding boundary
    (here: at most 1 in 1000 elements; on the 2.2 GB bench checkpoint 8e-6 of 1.1e9 elements differed)."""
    src = make_orion_checkpoint(tmp_path / "orion-bf16", sp_model=world["sp"], beta_scale=0.5, emb_mean=0.5,
                                dtype=torch.bfloat16, seed=5)
    out = tmp_path / "exact-bf16"
    convert_checkpoint(source=src, output=out, norm="exact", fidelity_tokens=0)
    s = {k: v.double() for k, v in _source(src).items()}
    got = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False, dtype=torch.bfloat16).state_dict()
    exact = {"model.embed_tokens.weight": s["model.embed_tokens.weight"]
             - s["model.embed_tokens.weight"].mean(1, keepdim=True)}
    for i in range(2):
        p = f"model.layers.{i}"
        for k in ("self_attn.o_proj", "mlp.down_proj"):
            w = s[f"{p}.{k}.weight"]
            exact[f"{p}.{k}.weight"] = w - w.mean(0)
        for k, ln in (("self_attn.q_proj", "input_layernorm"), ("self_attn.k_proj", "input_layernorm"),
                      ("self_attn.v_proj", "input_layernorm"), ("mlp.gate_proj", "post_attention_layernorm"),
                      ("mlp.up_proj", "post_attention_layernorm")):
            exact[f"{p}.{k}.bias"] = s[f"{p}.{k}.weight"] @ s[f"{p}.{ln}.bias"]
    differ = total = 0
    for name, ref in exact.items():
        y = got[name].double()
        lo = ref.to(torch.float32).to(torch.bfloat16).double()  # the float64 path's value
        spacing = torch.exp2(torch.floor(torch.log2(torch.maximum(ref.abs(), y.abs()).clamp_min(1e-30))) - 7)
        assert bool(((y - ref).abs() <= spacing).all()), name  # a bfloat16 neighbour of the exact value
        differ += int((y != lo).sum())
        total += y.numel()
    assert total > 40_000 and differ <= total // 1000, (differ, total)


def test_fit_gains_are_the_appendix_a_closed_form(world):
    """fit: g_i = sum (x_i/r) y_i / sum (x_i/r)^2 over the calibration tokens, recomputed here from the full
    teacher with forward hooks (independently of the streaming implementation)."""
    from kept.fidelity import calibration_tokens

    teacher = load_teacher(world["src"], dtype=torch.float64)
    ids = calibration_tokens(world["corpus"], n_tokens=128)
    sums = {}

    def hook(name, eps):
        def fn(mod, inp, out):
            x, y = inp[0].reshape(-1, inp[0].shape[-1]), out.reshape(-1, out.shape[-1])
            u = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            n, d = (u * y).sum(0), u.pow(2).sum(0)
            if name in sums:
                n, d = n + sums[name][0], d + sums[name][1]
            sums[name] = (n, d)
        return fn

    for name, mod in teacher.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.register_forward_hook(hook(name + ".weight", mod.eps))
    with torch.no_grad():
        teacher(ids)
    sd = AutoModelForCausalLM.from_pretrained(world["outs"]["fit"], trust_remote_code=False).state_dict()
    assert len(sums) == 2 * teacher.config.num_hidden_layers + 1
    for name, (n, d) in sums.items():
        torch.testing.assert_close(sd[name].double(), n / d, atol=1e-5, rtol=1e-5)
        assert (sd[name].double() - teacher.state_dict()[name]).abs().max() > 1e-3  # not just gamma


def test_fidelity_report(world):
    for norm in NORMS:
        out = world["outs"][norm]
        rep = json.loads((out / "fidelity.json").read_text())
        for key in ("norm", "n_tokens", "kl_mean", "kl_max", "top1_agreement", "max_abs_dlogit", "layer_rel_err",
                    "final_norm_logit_offset_norm", "mapping", "dropped"):
            assert key in rep, key
        assert rep["norm"] == norm and rep["n_tokens"] == 64
        assert len(rep["layer_rel_err"]) == 2 + 1
        assert rep["kl_max"] >= rep["kl_mean"] >= 0 and 0 <= rep["top1_agreement"] <= 1
        dropped = {d["source"] for d in rep["dropped"]}
        assert "model.norm.bias" in dropped
        assert ("model.layers.{i}.input_layernorm.bias" in dropped) is (norm != "exact")
        md = (out / "fidelity.md").read_text()
        assert "kl_mean" in md and "model.norm.bias" in md
    paper = world["reports"]["paper"]
    assert paper["kl_mean"] > 1e-3 and paper["layer_rel_err"][-1] > 1e-2  # dropping beta is not free
    assert paper["layer_rel_err"][0] == 0.0  # the embedding is copied


@pytest.mark.parametrize("norm", ["paper", "fit"])
def test_fidelity_metrics_match_full_models(world, norm):
    """The layer-streaming, vocabulary-blocked metrics equal those computed from the full HF models (teacher
    runtime and stock Llama student) with output_hidden_states, on the same calibration ids."""
    from kept.fidelity import calibration_tokens

    ids = calibration_tokens(world["corpus"], n_tokens=64, from_end=True)
    teacher = load_teacher(world["src"], dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(world["outs"][norm], trust_remote_code=False).eval()
    with torch.no_grad():
        t_out = teacher(ids, output_hidden_states=True)
        s_out = student(ids, output_hidden_states=True)
    zt, zs = t_out.logits.double(), s_out.logits.double()
    lt, ls = zt.log_softmax(-1), zs.log_softmax(-1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    rep = world["reports"][norm]
    assert rep["kl_mean"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert rep["kl_max"] == pytest.approx(float(kl.max()), rel=1e-4)
    assert rep["top1_agreement"] == pytest.approx(float((zt.argmax(-1) == zs.argmax(-1)).double().mean()))
    assert rep["max_abs_dlogit"] == pytest.approx(float((zt - zs).abs().max()), rel=1e-4)
    # slots 0..L-1: HF's hidden_states[i] is the stream entering layer i (the last entry is after the final norm)
    for i in range(teacher.config.num_hidden_layers):
        t, st = t_out.hidden_states[i].double(), s_out.hidden_states[i].double()
        want = float((st - t).norm() / t.norm())
        assert rep["layer_rel_err"][i] == pytest.approx(want, rel=1e-4, abs=1e-7), i


def test_dtype_and_shards(tmp_path, world):
    """--dtype bfloat16 casts every tensor; --max-shard-size splits the safetensors shards."""
    out = tmp_path / "bf16"
    limit = "40KB"
    convert_checkpoint(source=world["src"], output=out, norm="exact", dtype="bfloat16", max_shard_size=limit,
                       fidelity_tokens=16)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3
    total = 0
    for shard in shards:
        with safe_open(out / shard, framework="pt") as f:
            sizes = [f.get_tensor(k).numel() * 2 for k in f.keys()]
            assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
        assert sum(sizes) <= parse_size(limit) or len(sizes) == 1
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_full_orion14b_key_map_on_meta():
    """Orion-14B's config maps to the Llamion config values and a complete 40-layer key map (no weights)."""
    base = {"model_type": "orion", "vocab_size": 84608, "hidden_size": 5120, "intermediate_size": 15360,
            "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
            "max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": None, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
            "hidden_act": "silu", "torch_dtype": "bfloat16"}
    longchat = {**base, "max_position_embeddings": 200000, "rope_theta": 50000000.0}
    from transformers import LlamaConfig

    orion = FAMILIES["orion"]
    for cfg in (base, longchat):
        arch = orion.read_arch(cfg, Path("config.json"))
        source = source_shapes(orion, arch)
        assert source == expected_shapes(stablelm_config(cfg))  # = transformers' own names and shapes
        assert len(source) == 40 * 11 + 4  # 7 projections + 2 LayerNorms x (w, b) per layer; embed, norm w/b, head
        source["model.layers.0.self_attn.rotary_emb.inv_freq"] = (64,)  # some checkpoints carry it
        for norm in NORMS:
            plan = plan_conversion(family=orion, arch=arch, source_shapes=source, norm=norm, dtype="bfloat16")
            c = plan.llama_config
            assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"]) == (84608, 5120, 15360)
            assert (c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (40, 40, 40)
            assert c["rms_norm_eps"] == 1e-5 and c["tie_word_embeddings"] is False and c["hidden_act"] == "silu"
            assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, 0)
            assert c["rope_theta"] == cfg["rope_theta"] == c["rope_parameters"]["rope_theta"]
            assert c["max_position_embeddings"] == cfg["max_position_embeddings"]
            assert c["attention_bias"] is (norm == "exact") and c["dtype"] == "bfloat16"
            hf = LlamaConfig(**{k: v for k, v in c.items() if k not in LEGACY_KEYS})
            written_by_hf = json.loads(hf.to_json_string())  # what LlamaConfig.save_pretrained writes
            assert {k: v for k, v in c.items() if k not in LEGACY_KEYS} == written_by_hf
            target = llama_shapes(c)
            assert list(target.items()) == list(expected_shapes(hf).items())
            written = {s.target: s.shape for s in plan.steps}
            assert written == target  # no missing, no unexpected keys, shapes agree
            assert len(written) == 40 * (9 + (7 if norm == "exact" else 0)) + 3
            accounted = {n for s in plan.steps for n in s.sources} | {n for n, _ in plan.dropped}
            assert accounted == set(source)


def test_chat_template_is_llama3(tmp_path, world):
    from kept.chat import render

    src = make_orion_checkpoint(tmp_path / "chat", sp_model=world["sp"], chat=True)
    out = tmp_path / "chat-out"
    convert_checkpoint(source=src, output=out, norm="paper", fidelity_tokens=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    msgs = [{"role": "user", "content": "안녕하세요?"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "def f(): pass"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == render(msgs, "llama3", add_generation_prompt=True)
    assert text.startswith("<s><|start_header_id|>user<|end_header_id|>\n\n안녕하세요?</s>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert json.loads((out / "conversion.json").read_text())["chat_template"] == "llama3"
    # llama.cpp without Jinja picks its real-Llama-3 renderer (<|eot_id|>, no <s>) when the template's source
    # contains this marker; the rendered text has it, the source must not (python -m bench.run llamacpp)
    assert "<|start_header_id|>" in text and "<|start_header_id|>" not in tok.chat_template
    assert tok.chat_template is not None and (world["outs"]["paper"] / "tokenizer.json").is_file()
    base_tok = AutoTokenizer.from_pretrained(world["outs"]["paper"], trust_remote_code=False)
    assert not base_tok.chat_template  # base variants carry no chat template


def test_longchat_context_and_rope_carry_over(tmp_path, world):
    src = make_orion_checkpoint(tmp_path / "lc", sp_model=world["sp"], rope_theta=5e7, max_pos=2048)
    out = tmp_path / "lc-out"
    convert_checkpoint(source=src, output=out, norm="exact", fidelity_tokens=0)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert model.config.rope_parameters["rope_theta"] == 5e7 and model.config.max_position_embeddings == 2048
    teacher = load_teacher(src)
    ids = _ids(teacher.config.vocab_size, shape=(1, 300))  # past the default-theta regime of short inputs
    sd = _source(src)
    offset = sd["lm_head.weight"].double() @ sd["model.norm.bias"].double()
    torch.testing.assert_close(_logprobs(model.eval(), ids, offset), _logprobs(teacher, ids), atol=TOL, rtol=0)


def test_cli(tmp_path, world, capsys):
    from kept.cli import main

    out = tmp_path / "cli-out"
    rc = main(["convert", str(world["src"]), str(out), "--norm", "centered", "--dtype", "float16",
               "--max-shard-size", "1MB", "--fidelity-tokens", "32"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["norm"] == "centered"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    assert main(["convert", str(world["src"]), str(tmp_path / "x"), "--norm", "fit"]) == 1  # fit needs text
    assert not (tmp_path / "x").exists()
