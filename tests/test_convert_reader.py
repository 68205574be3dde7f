"""The restricted lazy reader returns exactly what torch.load(weights_only=True) / safetensors return, for every
layout the hub uses, without running pickled code, and converting any layout gives the same output."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_orion import make_orion_checkpoint, train_sp

from kept.checkpoint import TensorReader
from kept.convert import convert_checkpoint
from kept.errors import CheckpointError


def _zoo() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(10)
    return collections.OrderedDict(
        bf16=torch.randn(3, 5).to(torch.bfloat16),
        fp16=torch.randn(7).to(torch.float16),
        fp64=torch.randn(2, 2, dtype=torch.float64),
        i64=torch.arange(5),
        boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.empty(0, 4),
        transposed=base.t(),  # non-contiguous view
        row_slice=base[1:3],  # view with a storage offset
        shared_a=shared[:4],  # two views of one storage
        shared_b=shared[6:],
        param=torch.nn.Parameter(torch.randn(2, 3)),
    )


def test_pickle_reader_matches_torch_load(tmp_path):
    zoo = _zoo()
    torch.save(zoo, tmp_path / "pytorch_model.bin")
    want = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    with TensorReader(tmp_path) as reader:
        assert set(reader.names()) == set(zoo)
        for name in zoo:
            got = reader.get(name)
            assert got.dtype == want[name].dtype and got.shape == want[name].shape, name
            assert torch.equal(got, want[name].detach()), name
            assert reader.info(name).shape == tuple(want[name].shape)
        # get(out=) reads into a caller's buffer; get_rows reads a row range only
        buf = torch.empty(1024, dtype=torch.uint8)
        got = reader.get("bf16", out=buf)
        assert torch.equal(got, zoo["bf16"]) and got.data_ptr() == buf.data_ptr()
        assert torch.equal(reader.get_rows("row_slice", 1, 2), zoo["row_slice"][1:2])
        assert torch.equal(reader.get_rows("transposed", 2, 5), zoo["transposed"][2:5])
        with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
            reader.get("nope")


def test_safetensors_reader_matches_safetensors(tmp_path):
    zoo = {k: v.detach().contiguous() for k, v in _zoo().items() if not k.startswith("shared")}
    save_file(zoo, tmp_path / "model.safetensors")
    want = load_file(tmp_path / "model.safetensors")
    with TensorReader(tmp_path) as reader:
        for name, tensor in want.items():
            assert torch.equal(reader.get(name), tensor), name
        assert torch.equal(reader.get_rows("bf16", 1, 3), want["bf16"][1:3])


def test_legacy_and_foreign_files_are_refused(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        TensorReader(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        TensorReader(tmp_path)
    torch.save([torch.ones(2)], tmp_path / "pytorch_model.bin")  # a list, not a state dict
    with pytest.raises(CheckpointError, match="dict of tensors"):
        TensorReader(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        TensorReader(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        TensorReader(tmp_path / "missing")


@pytest.mark.parametrize("layout", ["single_bin", "sharded_safetensors", "single_safetensors"])
def test_every_hub_layout_converts_identically(tmp_path, layout):
    """An Orion checkpoint as one .bin, as sharded safetensors or as one safetensors file converts to the same
    bytes as the two-shard .bin layout."""
    sp = train_sp(tmp_path / "sp.model", byte_fallback=True)
    ref = make_orion_checkpoint(tmp_path / "ref", sp_model=sp)
    alt = make_orion_checkpoint(tmp_path / "alt", sp_model=sp)  # same seed, same tensors
    with TensorReader(alt) as reader:
        state = {n: reader.get(n) for n in reader.names()}
    for f in alt.glob("pytorch_model*"):
        f.unlink()
    if layout == "single_bin":
        torch.save(state, alt / "pytorch_model.bin")
    elif layout == "single_safetensors":
        save_file(state, alt / "model.safetensors")
    else:
        names = sorted(state)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for fname, keys in halves.items():
            save_file({k: state[k] for k in keys}, alt / fname)
        weight_map = {k: f for f, keys in halves.items() for k in keys}
        (alt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    outs = {}
    for name, src in (("ref", ref), ("alt", alt)):
        outs[name] = tmp_path / f"out-{name}"
        convert_checkpoint(source=src, output=outs[name], norm="exact", fidelity_tokens=0)
    with TensorReader(outs["ref"]) as a, TensorReader(outs["alt"]) as b:
        assert a.names() == b.names()
        for n in a.names():
            assert torch.equal(a.get(n), b.get(n)), n
