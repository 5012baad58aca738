#!/usr/bin/env bash
# Every GPU measurement of bench/ in one command, for a device machine that has torch but no fastai and no package
# index (the `device` tool's): fetch the wheels first with `bash ../shared/anchors/device_wheels.sh`, carry `.whl`,
# and run `bash bench/gpu_run.sh` there. Results go to $OUT (or ./gpu_out). Pass MODELS=launch-bound to time only
# the launch-bound fits, NOFASTAI=1 to leave fastai's ActivationStats out, NOPROFILE=1 to skip the profile.
set -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
timeout 90 python3 bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.txt"
cfgs=()
[ -n "$NOFASTAI" ] && cfgs=(--configs "ActivationHealth(),ActivationHealth(sample_every=1),GradientHealth(),ActivationHealth() + GradientHealth()")
timeout ${BENCH_S:-360} python3 bench/overhead.py --device cuda --reps ${REPS:-5} --fastai-reps 1 --models "${MODELS:-bf16}" \
  "${cfgs[@]}" --json "$OUT/bench.json" --md "$OUT/bench.md" 2>&1 | tee "$OUT/bench.txt"
[ -z "$NOPROFILE" ] && timeout ${PROFILE_S:-100} python3 bench/profile_hot_path.py --device cuda --models launch-bound 2>&1 | tee "$OUT/profile.txt"
exit 0
