#!/usr/bin/env bash
# The width-faithful rehearsal on one GPU machine, as ONE command (bench/bench_rehearsal.py says what it runs):
#
#   OUT=/path/to/results bash bench/rehearsal_gpu.sh [bench_rehearsal args]   # ~9 min on one H200/A100 (budget below)
#
# Made for a machine with python3, a CUDA torch, transformers and accelerate but no network and none of
# deepspeed / sentencepiece: it installs them from wheels carried in the ignored .whl/ folder of the checkout.
# Prepare .whl/ on a machine with PyPI (17 MB; three Python versions of the compiled wheels, since the GPU
# image's Python is not known in advance):
#
#   pip wheel --no-deps -w .whl deepspeed==0.19.8          # sdist -> py3-none-any wheel, no ops prebuilt
#   for v in 3.10 3.11 3.12; do pip download -d .whl --only-binary=:all: --implementation cp --python-version $v \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       hjson==3.1.0 py-cpuinfo==9.0.0 ninja==1.13.2 msgpack==1.2.4 einops==0.8.2 pydantic==2.14.4 \
#       sentencepiece==0.2.3 protobuf==7.36.2 psutil==7.2.2; done
#
# DeepSpeed compiles its CPU Adam (C++, no CUDA code) at first use: the machine needs g++ and the Python headers.
# That build runs first (SKIP_CPU_ADAM=1: not at all, for a run with no DeepSpeed launcher), timed, so a machine that cannot build it fails in seconds, not after the models are made.
# Output under $OUT: rehearsal.json / rehearsal.md (rewritten after every job), logs/<job>.log, console.log,
# gpu.txt, pip-list.txt, cpu_adam_build.txt. Record a GPU result with
#   python -m bench.bench_rehearsal --record $OUT/rehearsal.json
# The models and runs go to $WORK (default .rehearsal-work/ in the checkout: up to ~52 GB with depths 2, 4, 8 and
# the resume job's DeepSpeed state, not /tmp, which may be memory).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/rehearsal-out}"
WORK="${WORK:-$PWD/.rehearsal-work}"
BUDGET="${REHEARSAL_BUDGET_S:-420}"   # seconds of jobs; a job expected to end later is skipped and listed
mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1
date -u
python3 -m pip install -q --no-index --find-links .whl deepspeed==0.19.8 sentencepiece==0.2.3 psutil
python3 -c "import google.protobuf" 2>/dev/null || python3 -m pip install -q --no-index --find-links .whl protobuf==7.36.2
python3 -m pip list 2>/dev/null > "$OUT/pip-list.txt" || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ "${SKIP_CPU_ADAM:-0}" = 1 ] || python3 - <<'EOF' 2>&1 | tee "$OUT/cpu_adam_build.txt"
import time
import torch
t = time.time()
from deepspeed.ops.adam import DeepSpeedCPUAdam
DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(8))])
print(f"DeepSpeed CPU Adam ready in {time.time() - t:.1f} s")
EOF
rm -rf "$WORK"
python3 -m bench.bench_rehearsal --out-dir "$OUT" --work-dir "$WORK" --budget-s "$BUDGET" "$@"
rm -rf "$WORK"
date -u
