"""The fit and fidelity forward passes on CUDA (config/paper.yaml runs them there) give the CPU's results.
Skipped without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tiny_orion import make_corpus, make_orion_checkpoint, train_sp

from kept.convert import convert_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _norm_weights(out):
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = {}
    for name, shard in index["weight_map"].items():
        if "norm" in name:
            with safe_open(out / shard, framework="pt") as f:
                got[name] = f.get_tensor(name).double()
    return got


def test_fit_and_fidelity_on_cuda_match_cpu(tmp_path):
    sp = train_sp(tmp_path / "sp.model", byte_fallback=True)
    src = make_orion_checkpoint(tmp_path / "orion", sp_model=sp, layers=3)
    corpus = make_corpus(tmp_path / "corpus", sp_model=sp, n_seq=16, max_length=64)
    for norm in ("fit", "exact", "paper"):
        reports = {}
        for device in ("cpu", "cuda"):
            out = tmp_path / f"{norm}-{device}"
            reports[device] = convert_checkpoint(source=src, output=out, norm=norm, calibration=corpus,
                                                 fidelity_tokens=512, fit_tokens=512, device=device)
        cpu, gpu = reports["cpu"], reports["cuda"]
        if norm == "fit":
            wc, wg = _norm_weights(tmp_path / "fit-cpu"), _norm_weights(tmp_path / "fit-cuda")
            for name in wc:
                torch.testing.assert_close(wg[name], wc[name], atol=1e-4, rtol=1e-4)
        for key in ("kl_mean", "kl_max", "max_abs_dlogit"):
            assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-6), key
        assert gpu["top1_agreement"] == pytest.approx(cpu["top1_agreement"], abs=2 / 512)
        torch.testing.assert_close(torch.tensor(gpu["layer_rel_err"]), torch.tensor(cpu["layer_rel_err"]),
                                   atol=1e-5, rtol=1e-3)
        if norm == "exact":
            assert gpu["offset_corrected"]["kl_mean"] < 1e-8 and max(gpu["layer_rel_err"]) < 1e-4


def test_graft_and_layer_fit_on_cuda_match_cpu(tmp_path):
    """The calibration pass (MHA -> GQA fit graft and the layer fit) on CUDA gives the CPU's conversion."""
    from kept.convert.tiny import TEXT, make_checkpoint

    src = make_checkpoint(tmp_path / "neox", "gpt_neox")
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(TEXT * 40))
    reports = {}
    for device in ("cpu", "cuda"):
        reports[device] = convert_checkpoint(source=src, output=tmp_path / device, norm="exact", calibration=text,
                                             fidelity_tokens=512, fit_tokens=1024, kv_heads=2, kv_init="fit",
                                             layer_fit=True, device=device)
    conv = {d: json.loads((tmp_path / d / "conversion.json").read_text()) for d in reports}
    assert [x["groups"] for x in conv["cpu"]["calibration_fit"]["layers"]] == \
        [x["groups"] for x in conv["cuda"]["calibration_fit"]["layers"]]
    cpu, gpu = reports["cpu"]["offset_corrected"], reports["cuda"]["offset_corrected"]
    assert gpu["kl_mean"] == pytest.approx(cpu["kl_mean"], rel=1e-3, abs=1e-6)
    assert gpu["top1_agreement"] == pytest.approx(cpu["top1_agreement"], abs=2 / 512)
