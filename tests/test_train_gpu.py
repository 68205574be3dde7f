"""The training objectives and one bf16 XKD-z run on CUDA (skipped without a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

from kept.train.objectives import chunked_kl, naive_kl
from test_train_helpers import tiny_world  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("recompute", [True, False])
def test_chunked_kl_on_cuda_matches_naive(recompute):
    g = torch.Generator(device="cuda").manual_seed(0)
    hs = (0.3 * torch.randn(300, 64, device="cuda", generator=g)).requires_grad_()
    ws = (0.3 * torch.randn(5000, 64, device="cuda", generator=g)).requires_grad_()
    ht, wt = 0.3 * torch.randn(300, 64, device="cuda", generator=g), 0.3 * torch.randn(5000, 64, device="cuda", generator=g)
    got = chunked_kl(hs, ws, ht, wt, chunk=64, recompute=recompute)
    g_got = torch.autograd.grad(got, [hs, ws])
    ref = naive_kl(hs @ ws.T, ht @ wt.T)
    g_ref = torch.autograd.grad(ref, [hs, ws])
    assert abs(got.item() - ref.item()) < 1e-5
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # bf16 activations (what autocast hands the loss) stay close to the float32 reference
    got16 = chunked_kl(hs.detach().bfloat16().requires_grad_(), ws, ht.bfloat16(), wt, chunk=64, recompute=recompute)
    assert abs(got16.item() - ref.item()) < 0.05 * ref.item()


def test_xkd_z_bf16_run_on_cuda(tiny_world, tmp_path):
    from kept.train import TrainConfig, train

    cfg = TrainConfig(objective="xkd_z", student=str(tiny_world["students"]["paper"]),
                      teacher=str(tiny_world["teacher"]), corpus=str(tiny_world["corpus"]),
                      output=str(tmp_path / "m"), work_dir=str(tmp_path), steps=12, batch_size=4, lr=3e-3,
                      warmup_steps=2, log_every=1, mixed_precision="bf16", gradient_checkpointing=True,
                      progress=False)
    summary = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    assert summary["final_loss"] < 0.7 * log[0]["loss"]
