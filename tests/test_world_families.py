"""Toy teachers of other source families (kept.world.pretrain ``family``): pretrained a few steps with transformers'
own class of the family, written in the family's layout with the world's tokenizer, loaded with that class and
converted to stock Llama; the shared trainer's residual-stream slots line up for a parallel-residual family."""

from __future__ import annotations

import json

import pytest
import torch

from kept.convert import convert_checkpoint
from kept.errors import ConfigError
from kept.world.generator import WorldSpec
from kept.world.pretrain import PretrainConfig, pretrain_teacher
from kept.world.render import DOMAINS, write_world
from kept.world.tokenizer import load_sp, train_tokenizer

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128,
            seq_len=32, steps=2, batch_size=2, lr=1e-3, warmup_steps=1, embed_offset=0.3, norm_bias_std=0.2)
CLASSES = {"olmo": "OlmoForCausalLM", "gpt_neox": "GPTNeoXForCausalLM", "stablelm": "StableLmForCausalLM",
           "phi": "PhiForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "falcon": "FalconForCausalLM"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    write_world(spec=WorldSpec(seed=5, n_people=8, n_cities=4, passages_per_entity=2, quiz_docs=20, dialogues=10,
                               programs=10, long_docs=1, long_doc_chars=800), output=root / "world")
    train_tokenizer(text_files=[root / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                    output=root / "tokenizer.model", vocab_size=1000)
    return root


def _cfg(data, family, **kw) -> PretrainConfig:
    settings = dict(role="base", family=family, world=str(data / "world"), tokenizer=str(data / "tokenizer.model"),
                    output=str(data / family), work_dir=str(data / f"{family}-work"), seed=3, **TINY)
    return PretrainConfig(**{**settings, **kw})


@pytest.mark.parametrize("family", list(CLASSES))
def test_family_teacher_layout_loads_and_converts(data, family):
    import transformers

    pretrain_teacher(_cfg(data, family))
    out = data / family
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["architectures"] == [CLASSES[family]]
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert (out / "tokenizer.model").read_bytes() == (data / "tokenizer.model").read_bytes()
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert type(model).__name__ == CLASSES[family] and model.config.vocab_size == 1000
    if family == "gpt_neox":  # the family's own choices: parallel residual, partial rotary, GELU
        assert model.config.use_parallel_residual and model.config.hidden_act == "gelu"
        assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
        biases = torch.cat([m.bias for m in model.modules() if isinstance(m, torch.nn.LayerNorm)])
        assert biases.abs().max().item() > 0.05  # the shaped LayerNorm biases survive a short run
    emb = model.get_input_embeddings().weight
    assert emb.mean().item() == pytest.approx(0.3, abs=0.02)  # the shared offset of the shaped regime
    from kept.models import load_tokenizer

    sp = load_sp(data / "tokenizer.model")
    text = "Seoul is a city."
    assert load_tokenizer(out)(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    rep = convert_checkpoint(source=out, output=data / f"{family}-llama", norm="exact", fidelity_tokens=0)
    assert rep is not None
    llama = transformers.AutoModelForCausalLM.from_pretrained(data / f"{family}-llama", trust_remote_code=False)
    assert llama.config.model_type == "llama"
    ids = torch.tensor([sp.encode(text)])
    with torch.no_grad():
        lt, ls = model(ids).logits, llama(ids).logits
    # olmo and qwen2 convert exactly; stablelm up to the final norm's logit offset; gpt_neox, phi and falcon (parallel
    # residual, GELU) and qwen3 (q/k norms as fitted scales) approximately
    tol = 1e-4 if family in ("olmo", "qwen2") else 0.5
    assert (lt - ls).abs().max().item() < tol


@pytest.mark.parametrize("family", ["gpt_neox", "falcon"])
def test_family_slots_line_up(data, family):
    """XKD-h's L+1 slots of a GPT-NeoX / Falcon teacher (hooks on any family: Falcon keeps its layers in ``h`` and
    returns tuples) equal HF's hidden_states at the boundaries."""
    import transformers

    from kept.train.objectives import StreamCapture, teacher_outputs

    out = data / family
    if not out.is_dir():
        pretrain_teacher(_cfg(data, family))
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    cap = StreamCapture(model)
    ids = torch.tensor([[1, 5, 9, 30, 7, 2]])
    slots = teacher_outputs(model, ids, objective="xkd_h", capture=cap)["slots"]
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    assert len(slots) == len(ref) == model.config.num_hidden_layers + 1
    for i in range(len(slots) - 1):  # HF replaces the last slot by the final-normed state
        torch.testing.assert_close(slots[i], ref[i], msg=f"slot {i}")


def test_family_recipe_errors(data):
    with pytest.raises(ConfigError, match="family 'mamba'"):
        _cfg(data, "mamba")
    with pytest.raises(ConfigError, match="base teachers only"):
        _cfg(data, "olmo", role="chat", init_from="x")
    with pytest.raises(ConfigError, match="not GPTNeoXConfig settings"):
        pretrain_teacher(_cfg(data, "gpt_neox", family_options={"no_such_key": 1}, output=str(data / "bad")))


@pytest.mark.parametrize("objective", ["xkd_h", "xkd_z"])
def test_converted_student_distils_from_a_gpt_neox_teacher(data, objective):
    """XKD-h and XKD-z of a converted (sequential, SiLU) student against its parallel GELU GPT-NeoX teacher, through
    the shared trainer; the first step's loss is the conversion's error at the boundaries / in the logits."""
    from kept.train import TrainConfig, train
    from kept.world.pretrain import pack_pretraining

    teacher = data / "gpt_neox"
    if not teacher.is_dir():
        pretrain_teacher(_cfg(data, "gpt_neox"))
    student = data / "gpt_neox-paper"
    if not student.is_dir():
        convert_checkpoint(source=teacher, output=student, norm="paper", fidelity_tokens=0)
    corpus = data / "neox-corpus"
    if not corpus.is_dir():
        pack_pretraining(_cfg(data, "gpt_neox"), corpus)
    out = data / f"neox-{objective}"
    summary = train(TrainConfig(objective=objective, student=str(student), teacher=str(teacher), corpus=str(corpus),
                                output=str(out), work_dir=str(data / f"neox-{objective}-work"), steps=2,
                                batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, progress=False))
    log = [json.loads(line) for line in (data / f"neox-{objective}-work" / "train_log.jsonl").read_text().splitlines()]
    metric = "mse" if objective == "xkd_h" else "kl"
    losses = [row[metric] for row in log if metric in row]
    assert losses and all(0 < v < 1e3 for v in losses)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama" and summary["steps"] == 2


def test_teacher_topk_cache_reads_a_gpt_neox_head(data):
    """The offline XKD-z cache projects through GPT-NeoX's own head (embed_out) and final norm: its top-k equal the
    model's own log-probs."""
    import transformers

    from kept.train.cache import teacher_topk

    out = data / "gpt_neox"
    if not out.is_dir():
        pretrain_teacher(_cfg(data, "gpt_neox"))
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    ids = torch.tensor([[1, 5, 9, 30, 7, 2]])
    idx, lp, rest = teacher_topk(model, ids, k=4)
    with torch.no_grad():
        ref_lp, ref_idx = torch.log_softmax(model(ids).logits.float(), dim=-1).topk(4, dim=-1)
    assert torch.equal(idx.long(), ref_idx)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    assert torch.all(rest < 0)


def test_head_inputs_apply_a_head_bias_exactly():
    """Phi's LM head has a bias: the chunked losses get [hidden, 1] and [weight, bias], whose product is the head's
    own output, and a UT step on them moves the bias."""
    import transformers

    from kept.train.objectives import head_inputs

    model = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with torch.no_grad():
        model.lm_head.bias.normal_()
    hidden = torch.randn(2, 3, 16)
    h, w = head_inputs(model, hidden)
    assert h.shape == (2, 3, 17) and w.shape == (50, 17)
    torch.testing.assert_close(h @ w.T, model.lm_head(hidden))
    (h @ w.T).logsumexp(-1).sum().backward()
    assert model.lm_head.bias.grad is not None and model.lm_head.bias.grad.abs().sum() > 0
