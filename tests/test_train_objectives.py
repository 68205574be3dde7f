"""The objectives on their own: chunked head losses against full-logit references, top-k buckets, XKD-h slots."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kept.train.objectives import (
    LabelTarget,
    StreamCapture,
    TopKTarget,
    chunked_head_loss,
    chunked_kl,
    hidden_mse,
    naive_kl,
    next_token_labels,
)
from kept.train.trainer import LRSchedule


def _pair(n=45, d=24, v=203, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hs = (0.3 * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_()
    ws = (0.3 * torch.randn(v, d, generator=g, dtype=dtype)).requires_grad_()
    ht = 0.3 * torch.randn(n, d, generator=g, dtype=dtype)
    wt = 0.3 * torch.randn(v, d, generator=g, dtype=dtype)
    return hs, ws, ht, wt


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_kl_equals_naive_with_gradient(recompute, temperature):
    hs, ws, ht, wt = _pair()
    got = chunked_kl(hs, ws, ht, wt, temperature=temperature, chunk=8, recompute=recompute)
    g_got = torch.autograd.grad(got * 1.7, [hs, ws])
    ref = naive_kl(hs @ ws.T, ht @ wt.T, temperature=temperature)
    g_ref = torch.autograd.grad(ref * 1.7, [hs, ws])
    assert 0.05 < ref.item() < 5  # a loss of ordinary size, so 1e-6 is a tight bound
    assert abs(got.item() - ref.item()) <= 1e-6
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_chunked_kl_chunk_size_does_not_matter_and_zero_at_identity():
    hs, ws, _, _ = _pair()
    a = chunked_kl(hs, ws, hs.detach(), ws.detach(), chunk=1)
    b = chunked_kl(hs, ws, hs.detach(), ws.detach(), chunk=1000)
    assert abs(a.item()) < 1e-6 and abs(b.item()) < 1e-6
    hs2, ws2, ht, wt = _pair(seed=1)
    c1 = chunked_kl(hs2, ws2, ht, wt, chunk=1)
    c2 = chunked_kl(hs2, ws2, ht, wt, chunk=7)
    assert abs(c1.item() - c2.item()) < 1e-6


def test_chunked_cross_entropy_equals_torch():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 11, 16, generator=g).requires_grad_()
    weight = torch.randn(50, 16, generator=g).requires_grad_()
    ids = torch.randint(0, 50, (3, 11), generator=g)
    labels = next_token_labels(ids)
    assert (labels[:, -1] == -100).all() and torch.equal(labels[:, :-1], ids[:, 1:])
    got = chunked_head_loss(hidden, weight, LabelTarget(labels.reshape(-1)), chunk=5, normalizer=3 * 10)
    ref = F.cross_entropy((hidden @ weight.T).reshape(-1, 50), labels.reshape(-1))
    assert abs(got.item() - ref.item()) < 1e-5
    for a, b in zip(torch.autograd.grad(got, [hidden, weight]), torch.autograd.grad(ref, [hidden, weight])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_topk_with_full_vocabulary_is_the_online_kl(temperature):
    hs, ws, ht, wt = _pair(v=64)
    logp = torch.log_softmax((ht @ wt.T) / temperature, dim=-1)
    lp, idx = logp.topk(64, dim=-1)
    rest = torch.full((hs.shape[0],), float("-inf"))
    got = chunked_head_loss(hs, ws, TopKTarget(idx, lp, rest, temperature=temperature), chunk=8)
    ref = naive_kl(hs @ ws.T, ht @ wt.T, temperature=temperature)
    assert abs(got.item() - ref.item()) < 1e-6
    for a, b in zip(torch.autograd.grad(got, [hs, ws]), torch.autograd.grad(ref, [hs, ws])):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_topk_bucketed_kl_is_a_lower_bound_and_matches_bucket_definition():
    hs, ws, ht, wt = _pair(v=64)
    logp_t = torch.log_softmax(ht @ wt.T, dim=-1)
    lp, idx = logp_t.topk(5, dim=-1)
    rest = torch.logsumexp(logp_t.scatter(1, idx, float("-inf")), dim=-1)
    got = chunked_head_loss(hs, ws, TopKTarget(idx, lp, rest), chunk=8).item()
    full = naive_kl(hs @ ws.T, ht @ wt.T).item()
    # explicit reference: distributions over the 5 tokens plus one rest bucket
    logp_s = torch.log_softmax(hs @ ws.T, dim=-1).detach()
    ps_k = logp_s.gather(1, idx).exp()
    pt = torch.cat([lp.exp(), rest.exp()[:, None]], 1)
    ps = torch.cat([ps_k, (1 - ps_k.sum(1, keepdim=True))], 1)
    ref = (pt * (pt.log() - ps.log())).sum(1).mean().item()
    assert got == pytest.approx(ref, abs=1e-5)
    assert 0 < got < full  # coarse-graining never increases a KL


def test_hidden_mse_centering():
    g = torch.Generator().manual_seed(3)
    teacher = [torch.randn(2, 5, 8, generator=g) + 3.0 for _ in range(3)]
    centred = [t - t.mean(-1, keepdim=True) for t in teacher]
    assert hidden_mse(centred, teacher, centered=True).item() < 1e-12
    assert hidden_mse(centred, teacher, centered=False).item() > 1.0  # the spurious loss centring removes
    student = [t + 0.1 for t in teacher]
    assert hidden_mse(student, teacher, centered=False).item() == pytest.approx(0.01, rel=1e-5)


def test_stream_capture_records_raw_last_layer_output():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    cap = StreamCapture(model)
    ids = torch.randint(0, 40, (1, 6))
    cap.armed = True
    out = model(ids, output_hidden_states=True)
    cap.armed = False
    slots = cap.take()
    assert len(slots) == 3
    torch.testing.assert_close(slots[0], out.hidden_states[0])
    torch.testing.assert_close(slots[1], out.hidden_states[1])
    normed = model.model.norm(slots[2])
    torch.testing.assert_close(normed, out.hidden_states[2])  # HF's last slot is the final-normed state
    assert not torch.allclose(slots[2], out.hidden_states[2])
    model(ids)  # disarmed: nothing recorded
    with pytest.raises(RuntimeError, match="slot"):
        cap.take()


def test_lr_schedule_warmup_then_cosine():
    s = LRSchedule(warmup=4, total=20, min_ratio=0.1)
    assert [s(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0
    values = [s(k) for k in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert s(20) == pytest.approx(0.1)
    assert s(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
