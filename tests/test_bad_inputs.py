"""Bad inputs to ``kept convert``: each fails with a KeptError that names the file, tensor or key, and leaves no
output behind (no output directory, no temporary sibling). A pickle that would run code is refused unrun."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tiny_orion import make_corpus, make_orion_checkpoint, train_sp

from kept.checkpoint import TensorReader
from kept.convert import convert_checkpoint
from kept.errors import CheckpointError, ConfigError, KeptError, MappingError

SHARD1 = "pytorch_model-00001-of-00002.bin"
SHARD2 = "pytorch_model-00002-of-00002.bin"
INDEX = "pytorch_model.bin.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    sp = train_sp(root / "sp.model", byte_fallback=True)
    return {"sp": sp, "orion": make_orion_checkpoint(root / "orion", sp_model=sp, layers=1)}


@pytest.fixture
def src(tmp_path, pristine):
    """A fresh, editable copy of a valid tiny Orion checkpoint."""
    return Path(shutil.copytree(pristine["orion"], tmp_path / "orion"))


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def _rewrite_shard(src: Path, shard: str, edit):
    """Load one shard (trusted: we wrote it), edit its dict, save it back in torch.save format."""
    state = torch.load(src / shard, weights_only=True)
    edit(state)
    torch.save(state, src / shard)


def _expect_failure(src: Path, tmp_path: Path, exc_type, *needles: str, **kwargs):
    out = tmp_path / "out"
    with pytest.raises(exc_type) as info:
        convert_checkpoint(source=src, output=out, norm=kwargs.pop("norm", "exact"), fidelity_tokens=8, **kwargs)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in error: {message}"
    assert not out.exists(), "a failed conversion left an output"
    assert not list(tmp_path.glob(".tmp-*")), "a failed conversion left a temporary directory"
    return message


def test_valid_copy_converts(src, tmp_path):
    """The fixture itself is good: the failures below come from the edits alone."""
    convert_checkpoint(source=src, output=tmp_path / "ok", norm="exact", fidelity_tokens=8)
    assert (tmp_path / "ok" / "config.json").is_file()


def test_missing_config(src, tmp_path):
    (src / "config.json").unlink()
    _expect_failure(src, tmp_path, CheckpointError, "config.json")


def test_wrong_model_type(src, tmp_path):
    """An Orion checkpoint labelled as a family the converter knows: its tensors name the mismatch (before the
    tokenizer, which would only say that a Llama checkpoint lacks tokenizer.json)."""
    _edit_json(src / "config.json", model_type="llama")
    _expect_failure(src, tmp_path, MappingError, "input_layernorm.bias", "llama->Llama")


@pytest.mark.parametrize("key,value", [("hidden_size", -64), ("num_attention_heads", 5), ("num_hidden_layers", "2"),
                                       ("rope_scaling", {"type": "linear", "factor": 2.0}),
                                       ("num_key_value_heads", 2)])
def test_bad_config_value(src, tmp_path, key, value):
    _edit_json(src / "config.json", **{key: value})
    _expect_failure(src, tmp_path, CheckpointError, "config.json", key)


def test_missing_shard(src, tmp_path):
    (src / SHARD2).unlink()
    _expect_failure(src, tmp_path, CheckpointError, SHARD2)


def test_truncated_shard(src, tmp_path):
    data = (src / SHARD1).read_bytes()
    (src / SHARD1).write_bytes(data[: len(data) // 2])
    _expect_failure(src, tmp_path, CheckpointError, SHARD1, "truncated")


def test_index_points_to_missing_tensor(src, tmp_path):
    index = json.loads((src / INDEX).read_text())
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = SHARD1
    (src / INDEX).write_text(json.dumps(index))
    _expect_failure(src, tmp_path, CheckpointError, "model.layers.0.mlp.extra_proj.weight", SHARD1)


def test_tensor_missing_from_checkpoint(src, tmp_path):
    index = json.loads((src / INDEX).read_text())
    shard = index["weight_map"].pop("model.layers.0.self_attn.v_proj.weight")
    (src / INDEX).write_text(json.dumps(index))
    _rewrite_shard(src, shard, lambda s: s.pop("model.layers.0.self_attn.v_proj.weight"))
    _expect_failure(src, tmp_path, CheckpointError, "model.layers.0.self_attn.v_proj.weight")


def test_unexpected_tensor(src, tmp_path):
    index = json.loads((src / INDEX).read_text())
    index["weight_map"]["model.layers.0.self_attn.q_norm.weight"] = SHARD1
    (src / INDEX).write_text(json.dumps(index))
    _rewrite_shard(src, SHARD1, lambda s: s.__setitem__("model.layers.0.self_attn.q_norm.weight", torch.ones(16)))
    _expect_failure(src, tmp_path, MappingError, "model.layers.0.self_attn.q_norm.weight")


def test_tensor_with_wrong_shape(src, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    shard = json.loads((src / INDEX).read_text())["weight_map"][name]
    _rewrite_shard(src, shard, lambda s: s.__setitem__(name, s[name][:-1].clone()))
    _expect_failure(src, tmp_path, CheckpointError, name, "shape")


def test_vocab_size_differs_from_embedding_rows(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    _edit_json(src / "config.json", vocab_size=cfg["vocab_size"] + 8)
    _expect_failure(src, tmp_path, CheckpointError, "vocab_size", "model.embed_tokens.weight")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(src, tmp_path, bad):
    name = "model.layers.0.self_attn.o_proj.weight"
    shard = json.loads((src / INDEX).read_text())["weight_map"][name]

    def poison(state):
        state[name] = state[name].clone()
        state[name][3, 5] = bad

    _rewrite_shard(src, shard, poison)
    _expect_failure(src, tmp_path, CheckpointError, name, "NaN or Inf")


def test_missing_tokenizer(src, tmp_path):
    (src / "tokenizer.model").unlink()
    _expect_failure(src, tmp_path, CheckpointError, "tokenizer.model")


def test_tokenizer_vocabulary_mismatch(src, tmp_path):
    """A tokenizer with more pieces than the embedding has rows (e.g. another model's tokenizer)."""
    train_sp(src / "tokenizer.model", vocab_size=900, byte_fallback=True)
    _expect_failure(src, tmp_path, CheckpointError, "tokenizer.model", "vocab_size")


def test_tokenizer_special_ids_mismatch(src, tmp_path):
    _edit_json(src / "config.json", eos_token_id=7)
    _expect_failure(src, tmp_path, CheckpointError, "tokenizer.model", "eos_token_id")


def test_corrupt_tokenizer(src, tmp_path):
    (src / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model" * 3)
    _expect_failure(src, tmp_path, CheckpointError, "tokenizer.model")


def test_corrupt_index(src, tmp_path):
    (src / INDEX).write_text("{not json")
    _expect_failure(src, tmp_path, CheckpointError, INDEX)


@pytest.mark.parametrize("kwargs,needle", [({"norm": "layernorm"}, "'layernorm'"),
                                           ({"dtype": "int8"}, "'int8'"),
                                           ({"max_shard_size": "5 elephants"}, "5 elephants"),
                                           ({"norm": "fit"}, "calibration")])
def test_bad_options(src, tmp_path, kwargs, needle):
    _expect_failure(src, tmp_path, ConfigError, needle, **kwargs)


def test_calibration_ids_outside_vocabulary(src, tmp_path, pristine):
    corpus = make_corpus(tmp_path / "corpus", sp_model=pristine["sp"])
    import numpy as np

    arr = np.load(corpus / "shards" / "00000.npy")
    arr[-1, 0] = 10**6
    np.save(corpus / "shards" / "00000.npy", arr)
    _expect_failure(src, tmp_path, CheckpointError, str(corpus), "vocabulary", calibration=corpus)


def test_failed_conversion_keeps_a_previous_output(src, tmp_path):
    """Rerunning into an existing output that then fails leaves the previous complete output untouched."""
    out = tmp_path / "out"
    convert_checkpoint(source=src, output=out, norm="paper", fidelity_tokens=0)
    before = sorted(p.name for p in out.iterdir())
    (src / "tokenizer.model").unlink()
    with pytest.raises(KeptError):
        convert_checkpoint(source=src, output=out, norm="exact", fidelity_tokens=0)
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "conversion.json").read_text())["norm"] == "paper"


# ---- malicious pickles --------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Evil, _EvalEvil])
def test_malicious_pickle_is_refused_and_nothing_runs(src, tmp_path, payload):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    state = torch.load(src / SHARD1, weights_only=True)
    state["model.layers.0.mlp.gate_proj.weight"] = payload(marker)
    torch.save(state, bad)
    # the payload is live: plain pickle loading would run it
    torch.load(bad, weights_only=False)
    assert marker.exists()
    marker.unlink()

    shutil.copyfile(bad, src / SHARD1)
    message = _expect_failure(src, tmp_path, CheckpointError, SHARD1, "refusing")
    assert "system" in message or "eval" in message
    assert not marker.exists(), "the pickle's payload ran"
    with pytest.raises(CheckpointError):
        TensorReader(src)
    assert not marker.exists()


ZOO_BAD = [  # (family, config.json edits, what the one line must name)
    ("falcon", {"alibi": True}, ("alibi=true", "ALiBi")),
    ("baichuan", {"hidden_size": 5120, "num_attention_heads": 40}, ("hidden_size 5120", "ALiBi")),
    ("qwen2", {"rope_scaling": {"rope_type": "mrope", "mrope_section": [2, 2, 4]}}, ("rope_type 'mrope'",)),
    ("qwen3", {"num_attention_heads": 3, "num_key_value_heads": 1}, ("not divisible by num_attention_heads 3",)),
    ("gemma", {"use_bidirectional_attention": True}, ("use_bidirectional_attention",)),
]


@pytest.mark.parametrize("family,edits,needles", ZOO_BAD, ids=[f"{f}-{'-'.join(e)}" for f, e, _ in ZOO_BAD])
def test_zoo_config_refused_in_one_line(tmp_path, family, edits, needles):
    """A zoo family's config.json asking for what stock Llama cannot hold (ALiBi, an unknown RoPE type, a width the
    heads do not divide, bidirectional attention): one line naming the key, nothing written."""
    from kept.convert.tiny import make_checkpoint

    src = make_checkpoint(tmp_path / "src", family, num_hidden_layers=1)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **edits}))
    with pytest.raises(KeptError) as err:
        convert_checkpoint(source=src, output=tmp_path / "out", fidelity_tokens=0)
    msg = str(err.value)
    assert "\n" not in msg and str(src / "config.json") in msg and all(n in msg for n in needles), msg
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
