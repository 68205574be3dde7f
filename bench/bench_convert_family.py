"""Conversion benchmark for non-Orion families (issues 18, 27): the same measurement as ``bench_convert`` -- ``exact``
conversion against a plain copy of the same files in the same run, peak RSS against the largest tensor -- on a
~2.2 GB Pythia-shaped GPT-NeoX checkpoint (fused QKV, partial rotary, GELU MLP, parallel residual, biases) and a
~2.1 GB Phi-3-mini-shaped one (the zoo: fused ``qkv_proj`` and ``gate_up_proj`` split by row selection, RMSNorm).

    .venv/bin/python -m bench.run convert_family [--quick]
"""

from __future__ import annotations

import sys

from bench.bench_convert import run as run_convert

FAMILIES = ("gpt_neox", "phi3")


def run(*, quick: bool = False) -> dict:
    parts = [(family, run_convert(quick=quick, family=family)) for family in FAMILIES]
    rows = [{"family": family, **row} for family, part in parts for row in part["rows"]]
    notes = "\n\n".join(f"{family}: {part['notes']}" for family, part in parts)
    return {"title": "Conversion of other families: " + ", ".join(FAMILIES) + " against a plain copy",
            "rows": rows, "notes": notes}


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
