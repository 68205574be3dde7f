"""Toy teacher pretraining through kept.train: Orion format out, chat/longchat recipes, determinism, and the
shaped regime (a residual-stream mean component that is free for the LayerNorm teacher but breaks the paper's
OPM)."""

from __future__ import annotations

import json

import pytest
import torch

from kept.errors import ConfigError
from kept.orion import load_teacher, read_orion_config
from kept.world.generator import WorldSpec
from kept.world.pretrain import PretrainConfig, pack_pretraining, pretrain_teacher
from kept.world.render import DOMAINS, write_world
from kept.world.tokenizer import train_tokenizer

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128,
            seq_len=64, steps=3, batch_size=2, lr=1e-3, warmup_steps=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    write_world(spec=WorldSpec(seed=5, n_people=10, n_cities=4, passages_per_entity=2, quiz_docs=40, dialogues=30,
                               programs=30, long_docs=1, long_doc_chars=1500), output=root / "world")
    train_tokenizer(text_files=[root / "world" / "text" / f"{d}.jsonl" for d in DOMAINS],
                    output=root / "tokenizer.model", vocab_size=1000)
    return root


def _cfg(data, name, **kw) -> PretrainConfig:
    settings = dict(role="base", world=str(data / "world"), tokenizer=str(data / "tokenizer.model"),
                    output=str(data / name), work_dir=str(data / f"{name}-work"), seed=3, **TINY)
    settings.update(kw)
    return PretrainConfig(**settings)


@pytest.fixture(scope="module")
def base(data):
    pretrain_teacher(_cfg(data, "base", embed_offset=0.5, norm_bias_std=0.3))
    return data / "base"


def test_base_teacher_is_an_orion_checkpoint_with_the_shaped_regime(base, data):
    cfg = read_orion_config(base)
    assert cfg["model_type"] == "orion" and cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == 1000
    assert sorted(p.name for p in base.glob("*.bin")) == ["pytorch_model-00001-of-00002.bin",
                                                         "pytorch_model-00002-of-00002.bin"]
    assert (base / "tokenizer.model").read_bytes() == (data / "tokenizer.model").read_bytes()
    assert "chat_format" not in json.loads((base / "tokenizer_config.json").read_text())
    model = load_teacher(base)
    emb = model.model.embed_tokens.weight
    assert emb.mean().item() == pytest.approx(0.5, abs=0.01)  # the shared offset survives a short run
    biases = torch.cat([m.bias for m in model.modules() if isinstance(m, torch.nn.LayerNorm)])
    assert 0.2 < biases.std().item() < 0.4
    summary = json.loads((data / "base-work" / "pretrain_summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] == 3 * 2 * 64


def test_chat_and_longchat_recipes(base, data):
    pretrain_teacher(_cfg(data, "chat", role="chat", init_from=str(base),
                          mixture={"dialogue": 0.8, "passages": 0.2}))
    assert json.loads((data / "chat" / "tokenizer_config.json").read_text())["chat_format"] == "orion"
    assert read_orion_config(data / "chat")["max_position_embeddings"] == 128
    pretrain_teacher(_cfg(data, "longchat", role="longchat", init_from=str(base), max_position_embeddings=512,
                          rope_theta=1e6, seq_len=256, mixture={"longdoc": 1.0}))
    cfg = read_orion_config(data / "longchat")
    assert cfg["max_position_embeddings"] == 512 and cfg["rope_theta"] == 1e6
    b, lc = load_teacher(base).state_dict(), load_teacher(data / "longchat").state_dict()
    assert set(b) == set(lc) and any(not torch.equal(b[k], lc[k]) for k in b)


def test_pretraining_is_deterministic(base, data):
    pretrain_teacher(_cfg(data, "again", embed_offset=0.5, norm_bias_std=0.3))
    a, b = load_teacher(base).state_dict(), load_teacher(data / "again").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_mixture_shares_the_budget(data, tmp_path):
    cfg = _cfg(data, "mix", mixture={"passages": 0.25, "quiz": 0.75}, steps=4, batch_size=4)
    m = pack_pretraining(cfg, tmp_path / "packed")
    assert m["num_sequences"] == 16 and m["padding_tokens"] == 0
    assert m["tokens_per_group"] == {"passages": 256, "quiz": 768}  # 4 x 4 x 64 tokens, 1:3


def test_embed_offset_is_free_for_the_teacher_and_breaks_the_paper_mapping(base, tmp_path):
    """Adding a constant to every embedding channel does not change the LayerNorm teacher, but the paper's OPM
    (RMSNorm, g = gamma, no centring) sees it: its fidelity drops, while the centred mapping does not care."""
    from kept.convert import convert_checkpoint
    from kept.orion import save_orion_checkpoint

    model = load_teacher(base)
    ids = torch.randint(3, 1000, (2, 24))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        model.model.embed_tokens.weight.sub_(0.5)  # remove the shaped offset
        assert torch.allclose(model(input_ids=ids).logits, ref, atol=1e-4)
    save_orion_checkpoint(model, tmp_path / "no-offset", tokenizer_model=base / "tokenizer.model", num_shards=1)
    kl = {}
    for name, src in (("offset", base), ("no-offset", tmp_path / "no-offset")):
        for norm in ("paper", "centered"):
            fid = convert_checkpoint(source=src, output=tmp_path / f"{name}-{norm}", norm=norm, fidelity_tokens=256)
            kl[name, norm] = fid["kl_mean"]
    assert kl["offset", "paper"] > 5 * kl["no-offset", "paper"]
    assert kl["offset", "centered"] == pytest.approx(kl["no-offset", "centered"], rel=0.05, abs=1e-4)


def test_bad_recipes_fail_clearly(data):
    with pytest.raises(ConfigError, match="role"):
        _cfg(data, "x", role="huge")
    with pytest.raises(ConfigError, match="init_from"):
        _cfg(data, "x", role="chat")
    with pytest.raises(ConfigError, match="unknown domain"):
        _cfg(data, "x", mixture={"web": 1.0})
    with pytest.raises(ConfigError, match="seq_len"):
        _cfg(data, "x", seq_len=1024)
