"""AdamW parameter groups under partitioned parameters, and the accelerate + DeepSpeed path on a CPU.

DeepSpeed ZeRO-3 replaces every parameter by an empty 1-D tensor (real shape in ``ds_shape``), so groups chosen
by shape silently lose weight decay. The first test simulates that partitioning (it always runs); the second
runs the trainer through ``accelerate launch`` with profiles/accelerate/deepspeed_zero3_offload.yaml on the CPU
(DeepSpeed's CPU accelerator, gloo) and checks that the decay reached the weights (skipped without deepspeed,
a GPU-only dependency: requirements-gpu.txt).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kept.train.trainer import decay_names, param_groups
from test_train_helpers import tiny_world  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def _models():
    from transformers import LlamaConfig, LlamaForCausalLM

    from kept.orion import new_orion_model

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, attention_bias=True, mlp_bias=True))
    orion = new_orion_model({"model_type": "orion", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                             "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                             "max_position_embeddings": 64})
    return {"llama": llama, "orion": orion}


def _partition_like_zero3(model: torch.nn.Module) -> None:
    """What deepspeed.zero.Init leaves on a rank: every parameter an empty 1-D tensor, its shape in ds_shape."""
    for p in model.parameters():
        p.ds_shape = p.shape
        p.data = torch.empty(0, dtype=p.dtype)


@pytest.mark.parametrize("kind", ["llama", "orion"])
def test_weight_decay_survives_partitioned_parameters(kind):
    model = _models()[kind]
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    decay, other = decay_names(model)
    assert set(decay) == weights  # every matrix and embedding decays ...
    assert other and all(n.endswith(".bias") or "norm" in n for n in other)  # ... norms and biases do not
    groups = {id(p): g["weight_decay"] for g in param_groups(model, 0.1) for p in g["params"]}
    _partition_like_zero3(model)
    assert all(p.ndim == 1 and p.numel() == 0 for p in model.parameters())
    assert decay_names(model) == (decay, other)
    after = {id(p): g["weight_decay"] for g in param_groups(model, 0.1) for p in g["params"]}
    assert after == groups
    params = dict(model.named_parameters())
    assert sum(after[id(params[n])] == 0.1 for n in weights) == len(weights)


def test_deepspeed_zero3_on_cpu_applies_weight_decay(tiny_world, tmp_path):
    """One AdamW step with lr * weight_decay = 0.5 through accelerate + DeepSpeed ZeRO-3 (parameters partitioned at
    load, optimizer on the CPU): every decayed matrix shrinks to about half (Adam's own step is lr = 1e-3 per
    element against weights of ~0.2), norm weights do not move by more than Adam's step."""
    pytest.importorskip("deepspeed")
    from kept.models import load_model
    from kept.train import TrainConfig
    from kept.train.launch import launch

    student = str(tiny_world["students"]["paper"])
    cfg = TrainConfig(objective="ut", student=student, corpus=str(tiny_world["corpus"]),
                      output=str(tmp_path / "model"), work_dir=str(tmp_path), steps=1, batch_size=2, lr=1e-3,
                      warmup_steps=1, weight_decay=500.0, max_grad_norm=1.0, progress=False)
    profile = ROOT / "profiles" / "accelerate" / "deepspeed_zero3_offload.yaml"
    summary = launch(cfg, launcher="accelerate", accelerate_config=str(profile), log_file=str(tmp_path / "ds.log"))
    assert (summary["distributed_type"], summary["zero_stage"]) == ("DEEPSPEED", 3)
    log = (tmp_path / "ds.log").read_text(errors="replace")
    before = load_model(student)
    after = dict(load_model(cfg.output).named_parameters())
    decay, other = decay_names(before)
    for name, p in before.named_parameters():
        ratio = (after[name].norm() / p.norm()).item()
        if name in decay:
            assert 0.45 < ratio < 0.56, (name, ratio, log[-3000:])
        else:
            assert abs(ratio - 1) < 0.01, (name, ratio)
