#!/usr/bin/env bash
# The multi-process checks of tests/test_train_dist.py on a machine with >= 2 CUDA GPUs (NOT YET RUN: no session
# that built them had more than one GPU; on CPU they run in CI over gloo). With CUDA present the same tests take the
# GPU path: torchrun ranks on cuda:<local rank> with NCCL, FSDP2's fully_shard on a CUDA mesh, DeepSpeed's CUDA
# accelerator (when deepspeed is installed, requirements-gpu.txt). Two ranks cannot share one GPU under NCCL, so
# one GPU is not enough. Output: $OUT/dist_gpu.txt (the measured max |dw| lines, kill times, pass/fail).
#
#   OUT=/path/to/out bash bench/dist_gpu.sh          # a few minutes
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/dist-gpu-out}"
mkdir -p "$OUT"
n=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$n" -lt 2 ]; then echo "bench/dist_gpu.sh: needs >= 2 CUDA GPUs, found $n" >&2; exit 2; fi
nvidia-smi -L > "$OUT/gpu.txt" || true
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the equivalence tolerance is for float32 arithmetic: keep TF32 off (torch's default for matmuls)
export NVIDIA_TF32_OVERRIDE=0
python -m pytest -q -s -rA tests/test_train_dist.py -k "not slurm_profile" 2>&1 | tee "$OUT/dist_gpu.txt"
