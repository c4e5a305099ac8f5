#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in ONE device call (about 8 minutes on an H100):
#   tools: run(command="bash benchmarks/gpu_session.sh", carry=[".data"])  after ../shared/tools/stage-data MNIST FashionMNIST
# Results land in $OUT (8 files at most come back): the GPU tests' log, epoch time, the step
# profile, freezing savings and the seed 004 sweep. Copy them into benchmarks/results/.
set -u
export PYTHONPATH=src FREEZELAB_DATA="${FREEZELAB_DATA:-.data}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/freezelab_gpu}"
mkdir -p "$OUT/s4"
log="$OUT/log.txt"
step() { echo "== $*" | tee -a "$log"; }
step "GPU tests";        timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider >>"$log" 2>&1; tail -1 "$log"
step "epoch time";       timeout 100 python3 benchmarks/epoch_time.py --out "$OUT" >>"$log" 2>&1
step "step profile";     timeout 60 python3 benchmarks/profile_step.py >>"$log" 2>&1
step "freezing savings"; timeout 150 python3 benchmarks/freezing_savings.py --out "$OUT" >>"$log" 2>&1
step "seed 004 sweep";   timeout 240 python3 benchmarks/sweep.py --jobs 12 --no-archive --config configs/seed004_fashion.yaml --runs-dir /tmp/sw4 --out "$OUT/s4" >>"$log" 2>&1
cat "$OUT"/*.md "$OUT"/s4/*.md 2>/dev/null
