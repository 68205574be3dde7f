#!/usr/bin/env bash
# One device session's work as ONE command (the device machine is lent for minutes, not hours):
#   1. the GPU tests (tests/*_gpu.py: chunked KL and a bf16 XKD-z run on CUDA, the fit/fidelity passes on CUDA);
#   2. the width-faithful rehearsal (bench/rehearsal_gpu.sh) at depths 2 and 4 within REHEARSAL_BUDGET_S.
# If DeepSpeed's CPU Adam cannot be built there, the rehearsal runs again with no launcher (plain process,
# optimizer on the GPU) so the memory-per-layer figures come back; the failure is in cpu_adam_build.txt.
# Everything lands in $OUT/raw and is packed into $OUT/device-session.tar.gz (the device tool brings back at most
# 8 files), with gpu_tests.txt and rehearsal.md/json also copied to $OUT's top.
#   OUT=/path/to/out bash bench/device_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device-out}"
RAW="$OUT/raw"
mkdir -p "$RAW"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
pack() {
    cp "$RAW"/gpu_tests.txt "$RAW"/rehearsal.md "$RAW"/rehearsal.json "$OUT"/ 2>/dev/null
    tar czf "$OUT/device-session.tar.gz" -C "$OUT" raw
    echo "device session: $(( $(date +%s) - t0 )) s"
}
trap pack EXIT
timeout "${GPU_TESTS_TIMEOUT_S:-150}" python3 -m pytest -q -rA -p no:cacheprovider tests/test_train_gpu.py \
    tests/test_convert_gpu.py 2>&1 | tee "$RAW/gpu_tests.txt"
echo "gpu tests: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s" | tee -a "$RAW/gpu_tests.txt"
OUT="$RAW" REHEARSAL_BUDGET_S="${REHEARSAL_BUDGET_S:-270}" timeout "${REHEARSAL_TIMEOUT_S:-390}" \
    bash bench/rehearsal_gpu.sh --depths 2 4
echo "rehearsal: exit $?, $(( $(date +%s) - t0 )) s"
if ! grep -q "CPU Adam ready" "$RAW/cpu_adam_build.txt" 2>/dev/null; then
    echo "DeepSpeed CPU Adam did not build: the rehearsal again with no launcher" | tee "$RAW/fallback.txt"
    mkdir -p "$RAW/nolauncher"
    OUT="$RAW/nolauncher" SKIP_CPU_ADAM=1 REHEARSAL_BUDGET_S="${FALLBACK_BUDGET_S:-120}" timeout 200 \
        bash bench/rehearsal_gpu.sh --depths 2 4 --launchers none --objectives xkd_z ut
fi
