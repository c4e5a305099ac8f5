#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in three device calls of under 10 minutes each (H100):
#   PARTS="tests epoch profile stale" bash benchmarks/gpu_session.sh
#   PARTS="savings sweep" bash benchmarks/gpu_session.sh
#   PARTS="compiled" bash benchmarks/gpu_session.sh      (compiling ResNet-50 and ViT-S takes minutes)
#   tools: run(command="bash benchmarks/gpu_session.sh", carry=[".data"])  after ../shared/tools/stage-data MNIST FashionMNIST
# Results land in $OUT (8 files at most come back): the GPU tests' log, epoch time, the step
# profile, freezing savings and the seed 004 sweep. Copy them into benchmarks/results/.
# PARTS (default: all but "compiled", more than one call's 10 minutes) picks some.
set -u
export PYTHONPATH=src FREEZELAB_DATA="${FREEZELAB_DATA:-.data}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT="${OUT:-/tmp/freezelab_gpu}"
PARTS="${PARTS:-tests epoch profile savings sweep stale}"
mkdir -p "$OUT/s4"
log="$OUT/log.txt"
want() { [[ " $PARTS " == *" $1 "* ]]; }
step() { echo "== $* $(date +%T)" | tee -a "$log"; }
if want tests;   then step "GPU tests";        timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_run_steppers.py tests/test_data.py >>"$log" 2>&1; tail -3 "$log"; fi
if want epoch;   then step "epoch time";       timeout 150 python3 benchmarks/epoch_time.py --out "$OUT" >>"$log" 2>&1; fi
if want profile; then step "step profile";     timeout 90 python3 benchmarks/profile_step.py >>"$log" 2>&1; fi
if want savings; then step "freezing savings"; timeout 240 python3 benchmarks/freezing_savings.py --profile --variants eager-tf32,eager-bf16 --out "$OUT" >>"$log" 2>&1; fi
if want compiled; then step "freezing savings, compiled"; timeout 540 python3 benchmarks/freezing_savings.py --profile --variants compiled-bf16 --out "$OUT/compiled" >>"$log" 2>&1; fi
if want stale;   then step "stale graph check"; timeout 90 python3 benchmarks/stale_graph_check.py >"$OUT/stale_graph_gpu.txt" 2>>"$log"; fi
if want sweep;   then step "seed 004 sweep";   timeout 240 python3 benchmarks/sweep.py --no-archive --config configs/seed004_fashion.yaml --runs-dir /tmp/sw4 --out "$OUT/s4" >>"$log" 2>&1; fi
step "done"
cat "$OUT"/*.md "$OUT"/s4/*.md 2>/dev/null
