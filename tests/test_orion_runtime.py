"""The teacher runtime (transformers' StableLm, no remote code) computes Orion's forward pass: checked against
the independent plain-PyTorch reference in tests/reference_orion.py, on a tiny checkpoint in the hub's format."""

from __future__ import annotations

import json

import pytest
import torch
from reference_orion import orion_forward
from tiny_orion import make_orion_checkpoint, train_sp

from kept.checkpoint import TensorReader
from kept.orion import load_teacher, read_orion_config


@pytest.fixture(scope="module")
def orion_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("orion_rt")
    sp = train_sp(root / "sp.model", byte_fallback=True)
    return make_orion_checkpoint(root / "orion", sp_model=sp, rope_theta=500.0)


def _state(directory):
    with TensorReader(directory) as reader:
        return {name: reader.get(name).double() for name in reader.names()}


def test_hub_layout(orion_dir):
    """Two pickled .bin shards + index + tokenizer.model, model_type orion: the layout the hub ships."""
    index = json.loads((orion_dir / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert (orion_dir / "tokenizer.model").is_file()
    assert read_orion_config(orion_dir)["model_type"] == "orion"


def test_runtime_matches_reference(orion_dir):
    """StableLm runtime logits equal the reference within 1e-5 (both float64, so the check is about the
    computation, not rounding)."""
    cfg = read_orion_config(orion_dir)
    teacher = load_teacher(orion_dir, dtype=torch.float64)
    ids = torch.randint(0, cfg["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = teacher(ids).logits
    want = orion_forward(_state(orion_dir), cfg, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and it is not trivially equal to a model without LayerNorm biases
    sd = _state(orion_dir)
    for k in sd:
        if k.endswith("layernorm.bias"):
            sd[k] = torch.zeros_like(sd[k])
    assert (orion_forward(sd, cfg, ids) - want).abs().max() > 1e-2


def test_runtime_matches_reference_float32(orion_dir):
    """In float32 the runtime stays within 1e-5 of the float64 reference on these tiny logits' scale."""
    cfg = read_orion_config(orion_dir)
    teacher = load_teacher(orion_dir, dtype=torch.float32)
    ids = torch.randint(0, cfg["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = teacher(ids).logits.double()
    want = orion_forward(_state(orion_dir), cfg, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
