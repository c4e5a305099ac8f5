#!/usr/bin/env bash
# The GPU measurements of the image-model issues (13, 15, 14), each part under one device call's 10 minutes (H200).
# Parts: tests seed000 savings seed003 seed002 lora_speed speed, e.g.
#   PARTS="tests seed000" bash benchmarks/gpu_image_session.sh
#   PARTS="speed" bash benchmarks/gpu_image_session.sh
#   tools: run(command="PARTS=... bash benchmarks/gpu_image_session.sh", carry=[".data"])  after ../shared/tools/stage-data CIFAR10-JPEG
# Results land in $OUT; copy them into benchmarks/results/.
set -u
export PYTHONPATH=src FREEZELAB_DATA="${FREEZELAB_DATA:-.data}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export FREEZELAB_CACHE="${FREEZELAB_CACHE:-/tmp/freezelab_cache}"
OUT="${OUT:-/tmp/freezelab_gpu}"
PARTS="${PARTS:-tests seed000}"
mkdir -p "$OUT"
log="$OUT/log.txt"
want() { [[ " $PARTS " == *" $1 "* ]]; }
step() { echo "== $* $(date +%T)" | tee -a "$log"; }
step "decode CIFAR-10 once (cached for every process)"
python3 -c "from freezelab.data import load_dataset; d = load_dataset('cifar10', recipe='train_test'); print(d.source, tuple(d.train.x.shape))" >>"$log" 2>&1
if want tests; then
  step "GPU tests"
  timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -p no:logging ${TESTS:-tests/test_run_inputs.py tests/test_run_steppers.py tests/test_data_augment.py tests/test_models.py} >"$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt" | tee -a "$log"
fi
if want seed000; then
  step "seed 000 study"
  timeout 420 python3 -c "from freezelab.cli import app; app()" run configs/seed000_cifar10.yaml --runs-dir /tmp/runs --jobs 6 >>"$log" 2>&1
  mkdir -p "$OUT/seed000"
  cp -r /tmp/runs/seed000_cifar10/report/. "$OUT/seed000/" 2>>"$log"
  python3 - "$OUT/seed000" <<'PY' >>"$log" 2>&1
import json, pathlib, sys
rows = [json.loads(p.read_text()) for p in pathlib.Path("/tmp/runs/seed000_cifar10").glob("*/*/summary.json")]
keep = ("variant", "seed", "final_test_acc", "best_val_acc", "avg_epoch_time_s", "total_time_s", "switches", "data_source", "device")
pathlib.Path(sys.argv[1], "summaries.json").write_text(json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=1))
print(len(rows), "summaries")
PY
  tar -C "$OUT" -czf "$OUT/seed000.tar.gz" seed000 && rm -r "$OUT/seed000"
fi
if want savings; then
  step "prefix savings vs FLOP share"
  timeout 150 python3 benchmarks/prefix_savings.py --bf16 --channels-last --out "$OUT" >>"$log" 2>&1
fi
if want seed003; then
  step "seed 003 study (${SEED003_SET:-})"
  timeout "${SEED003_TIMEOUT:-400}" python3 -c "from freezelab.cli import app; app()" run configs/seed003_cifar10.yaml --runs-dir /tmp/runs \
    --lockstep 1 ${SEED003_SET:-} >>"$log" 2>&1
  tar -C /tmp/runs --exclude='*.pt' -czf "$OUT/seed003_runs.tar.gz" seed003_cifar10
fi
if want seed002; then
  step "seed 002: pretrain on classes 0-4"
  timeout "${PRETRAIN_TIMEOUT:-90}" python3 -c "from freezelab.cli import app; app()" run configs/seed002_pretrain.yaml --runs-dir runs \
    --no-report ${PRETRAIN_SET:-} >>"$log" 2>&1
  step "seed 002: LoRA + Norm schedules on classes 5-9"
  timeout "${FINETUNE_TIMEOUT:-220}" python3 -c "from freezelab.cli import app; app()" run configs/seed002_lora_norm.yaml --runs-dir runs \
    --lockstep 1 --jobs "${FINETUNE_JOBS:-1}" ${FINETUNE_SET:-} >>"$log" 2>&1
  tar -C runs --exclude='*.pt' -czf "$OUT/seed002_runs.tar.gz" seed002_pretrain seed002_lora_norm
fi
if want lora_speed; then
  step "seed 002's shape: LoRA + Norm phases on ViT-S/16"
  timeout "${LORA_SPEED_TIMEOUT:-420}" python3 benchmarks/lora_norm_speed.py --out "$OUT" >>"$log" 2>&1
fi
if want speed; then
  step "image speed"
  timeout 560 python3 benchmarks/image_speed.py --out "$OUT" >>"$log" 2>&1
fi
step "done"
cat "$OUT"/*.md 2>/dev/null | head -80
