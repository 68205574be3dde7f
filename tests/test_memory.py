"""Memory bound of a conversion, measured from a child process on a 376 MiB checkpoint (3 pickled shards).

The child imports kept.convert and the transformers model code (~370 MB resident), records VmRSS, converts,
then reads its peak resident memory (VmHWM; per process image, so the parent's memory does not leak into it
as it does into ``ru_maxrss`` across fork+exec). The bound is on what the conversion adds (MiB):

* conversion proper (``exact``, fidelity off):  peak - before <= largest tensor + 64 MiB
* as the workflow runs it (``exact``, 256-token fidelity report):  peak - before <= 4 x largest tensor + 64 MiB

With the largest tensor at 32 MiB (16384 x 512 float32) that is <= 96 MiB and <= 192 MiB, far below the
376 MiB checkpoint (which a whole-shard or whole-model load would need at least once).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_orion import make_corpus, tiny_config, tiny_orion_model, train_sp

from kept.checkpoint import TensorReader
from kept.orion import save_orion_checkpoint

MB = 2**20

CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

from kept.convert import convert_checkpoint
# imports are not the conversion's memory: load the model code the fidelity pass uses before measuring
import kept.fidelity, kept.convert.plan, kept.tokenizer  # noqa: F401
from transformers import PreTrainedTokenizerFast  # noqa: F401
from transformers.models.llama import modeling_llama  # noqa: F401
from transformers.models.stablelm import modeling_stablelm  # noqa: F401

before = status("VmRSS")
convert_checkpoint(source=sys.argv[1], output=sys.argv[2], norm="exact", fidelity_tokens=int(sys.argv[3]),
                   calibration=sys.argv[4], max_shard_size="100MB")
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    sp = train_sp(root / "sp.model", byte_fallback=True)
    cfg = tiny_config(16384, hidden=512, inter=1536, layers=24, heads=8, max_pos=256)
    save_orion_checkpoint(tiny_orion_model(cfg), root / "orion", tokenizer_model=sp, num_shards=3)
    corpus = make_corpus(root / "corpus", sp_model=sp, n_seq=8, max_length=64)
    with TensorReader(root / "orion") as reader:
        sizes = [reader.info(n).nbytes for n in reader.names()]
    return {"root": root, "src": root / "orion", "corpus": corpus, "largest": max(sizes), "total": sum(sizes)}


def _convert_in_child(big, out, fidelity_tokens):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(big["src"]), str(out), str(fidelity_tokens), str(big["corpus"])],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("fidelity_tokens,factor", [(0, 1), (256, 4)])
def test_conversion_memory_stays_near_the_largest_tensor(big, tmp_path, fidelity_tokens, factor):
    assert big["total"] > 350 * MB and big["largest"] == 16384 * 512 * 4
    out = tmp_path / "out"
    m = _convert_in_child(big, out, fidelity_tokens)
    added = m["peak"] - m["before"]
    bound = factor * big["largest"] + 64 * MB
    print(f"\nfidelity_tokens={fidelity_tokens}: checkpoint {big['total'] / MB:.0f} MiB, largest tensor "
          f"{big['largest'] / MB:.0f} MiB, RSS before {m['before'] / MB:.0f} MiB, peak {m['peak'] / MB:.0f} MiB, "
          f"added {added / MB:.0f} MiB (bound {bound / MB:.0f} MiB)")
    assert added <= bound
    assert added < big["total"] / 2
    assert (out / "model.safetensors.index.json").is_file()
    # the output is complete and right: spot-check one centred tensor
    from safetensors import safe_open

    index = json.loads((out / "model.safetensors.index.json").read_text())
    name = "model.layers.7.mlp.down_proj.weight"
    with safe_open(out / index["weight_map"][name], framework="pt") as f:
        got = f.get_tensor(name).double()
    with TensorReader(big["src"]) as reader:
        w = reader.get(name).double()
    torch.testing.assert_close(got, w - w.mean(0), atol=1e-6, rtol=0)
