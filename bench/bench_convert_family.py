"""Conversion benchmark for a non-Orion family (issue 18): the same measurement as ``bench_convert`` -- ``exact``
conversion against a plain copy of the same files in the same run, peak RSS against the largest tensor -- on a
~2.2 GB Pythia-shaped GPT-NeoX checkpoint (fused QKV, partial rotary, GELU MLP, parallel residual, biases).

    .venv/bin/python -m bench.run convert_family [--quick]
"""

from __future__ import annotations

import sys

from bench.bench_convert import run as run_convert


def run(*, quick: bool = False) -> dict:
    return run_convert(quick=quick, family="gpt_neox")


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
