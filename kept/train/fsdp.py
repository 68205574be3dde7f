"""FSDP2 for the trainer: torch's ``fully_shard`` applied directly (``train.common.sharding: fsdp2``).

Directly rather than through accelerate's ``fsdp_version: 2``: accelerate drops its FSDP set-up on CPU processes
(a ``--cpu`` or CUDA-less launch becomes plain multi-CPU data parallelism), so that path could not be tested off a
GPU, while ``fully_shard`` runs the same on gloo CPU processes as on NCCL GPUs. One path, tested here.

* Each decoder layer is a shard unit, and the objective module (student + chunked loss) is the root unit, which
  holds the embeddings, the final norm and the LM head. FSDP2 keeps the root's parameters gathered from its
  forward to its backward, so the chunked XKD-z/UT loss, which reads the LM-head weight inside the root forward
  (and again in backward when it recomputes), sees the full weight.
* The optimizer is built after sharding from parameter groups chosen by name (kept.train.trainer.decay_names: the
  rule never looks at shapes, which are sharded now).
* Resume state is sharded: torch.distributed.checkpoint writes each rank's shards of the weights and AdamW moments
  (``fsdp/``), plus the scheduler as JSON. Exports gather a full state dict onto rank 0 (in host memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHARDINGS = ("none", "fsdp2")


def shard(module: nn.Module, layers: list[nn.Module], *, device_type: str, mixed_precision: str) -> None:
    """``fully_shard`` each of ``layers`` and then ``module`` (the root) over all ranks of the process group.
    bf16/fp16 mixed precision: parameters gathered in that dtype for compute, gradients reduced in float32."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0 (host memory; empty on the other ranks). Collective: every rank calls."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                 main: bool) -> None:
    """Each rank's shards of weights and optimizer state to ``path/fsdp`` (torch.distributed.checkpoint), the
    scheduler to ``path/scheduler.json``. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "fsdp"))
    if main:
        (path / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))


def load_sharded(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Inverse of :func:`save_sharded` (same world size). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / "fsdp"))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
