#!/usr/bin/env bash
# Before/after timing of two freezelab source trees in ONE device call (issue 12: within 5%).
#
# For each tree, with PYTHONPATH set to it: seed 004's epoch time (the default GPU path on the
# Fashion-MNIST recipe, 30 epochs, the median epoch after the first, as benchmarks/epoch_time.py's
# "freezelab-graph" row) and the 60-run seed 004 sweep (`python3 -m freezelab.cli run
# configs/seed004_fashion.yaml --no-report` into a fresh runs folder, wall time). Trees run in the
# order before, after, before, after (as many rounds as fit), so drift shows; the first round's
# "before" finds Inductor's cache cold, so compare each tree's fastest round (printed as "best").
# The sweeps of the first round are also compared run by run: the same configs must give the same
# curves in both trees (max |diff| of train loss and val accuracy over all 60 runs).
#
#   git archive 56eebda src | tar -x -C ab_before     # the tree before, as an untracked folder
#   tools: run(command="BEFORE_SRC=ab_before/src bash benchmarks/refactor_ab.sh", carry=[".data"])
#
# Env: BEFORE_SRC (required), AFTER_SRC (default src), FREEZELAB_DATA (default .data),
# PY (default python3), ROUNDS (default 2), LIMIT_S (default 560: a round starts only if it should end before this),
# OUT (if set: refactor_ab.json there); for a quick CPU check of the script itself:
# EPOCHS (default 30) and SWEEP_ARGS (extra `freezelab run` options), e.g.
#   BEFORE_SRC=ab_before/src EPOCHS=2 SWEEP_ARGS="--epochs 1 --seeds 1 --set subset=2000" ROUNDS=1 FREEZELAB_DATA=../shared/data bash benchmarks/refactor_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE_SRC="${BEFORE_SRC:?set BEFORE_SRC to the folder that holds the freezelab/ package before the change}"
AFTER_SRC="${AFTER_SRC:-src}"
ROUNDS="${ROUNDS:-2}"
export EPOCHS="${EPOCHS:-30}"
SWEEP_ARGS="${SWEEP_ARGS:-}"
LIMIT_S="${LIMIT_S:-560}"
export FREEZELAB_DATA="${FREEZELAB_DATA:-.data}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg CI=true
PY="${PY:-python3}"  # on the device machine, python3 is the one with torch
for tree in "$BEFORE_SRC" "$AFTER_SRC"; do
  [[ -f "$tree/freezelab/__init__.py" ]] || { echo "error: $tree/freezelab/__init__.py not found" >&2; exit 2; }
done
BEFORE_SRC="$(cd "$BEFORE_SRC" && pwd)"
AFTER_SRC="$(cd "$AFTER_SRC" && pwd)"
WORK="$(mktemp -d /tmp/refactor_ab.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
START=$(date +%s)

# One epoch-time measurement of the tree on PYTHONPATH; prints one JSON line.
epoch_time() {
  "$PY" - "$1" <<'EOF'
import json, os, statistics, sys
import freezelab
assert freezelab.__file__.startswith(sys.argv[1]), (freezelab.__file__, sys.argv[1])
try:
    from freezelab.run import train  # after the refactor
except ImportError:
    from freezelab.train import train  # before it
cfg = {"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "model": "fashion_mlp", "optimizer": "adam", "lr": 1e-3,
       "epochs": int(os.environ["EPOCHS"]), "batch_size": 128, "seed": 42}
epochs = train(cfg, progress=False).epochs
times = epochs["epoch_time_s"].tolist()
print(json.dumps({"epoch_s": statistics.median(times[1:]), "first_epoch_s": times[0],
                  "train_s": statistics.median(epochs["train_time_s"].tolist()[1:]),
                  "final_train_loss": epochs["train_loss"].iloc[-1], "final_val_acc": epochs["val_acc"].iloc[-1]}))
EOF
}

measure() {  # measure LABEL TREE ROUND
  local label=$1 tree=$2 round=$3 runs="$WORK/runs_${1}_$3" t0 t1 epoch
  echo "== $label round $round: epoch time $(date +%T)" >&2
  epoch=$(PYTHONPATH="$tree" epoch_time "$tree" | tail -1)
  echo "== $label round $round: seed 004 sweep $(date +%T)" >&2
  t0=$(date +%s.%N)
  PYTHONPATH="$tree" "$PY" -m freezelab.cli run configs/seed004_fashion.yaml --runs-dir "$runs" --no-report $SWEEP_ARGS >"$WORK/sweep_${label}_$round.log" 2>&1 \
    || { tail -20 "$WORK/sweep_${label}_$round.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); d.update(tree=sys.argv[2], round=int(sys.argv[3]), sweep_s=float(sys.argv[5]) - float(sys.argv[4]), runs=sys.argv[6]); print(json.dumps(d))' \
    "$epoch" "$label" "$round" "$t0" "$t1" "$runs" >>"$RESULTS"
  tail -1 "$RESULTS" >&2
}

round=1
while (( round <= ROUNDS )); do
  round_start=$(date +%s)
  measure before "$BEFORE_SRC" "$round"
  measure after "$AFTER_SRC" "$round"
  now=$(date +%s)
  (( now - START + now - round_start < LIMIT_S )) || { echo "== no time for round $((round + 1))" >&2; break; }
  round=$((round + 1))
done

"$PY" - "$RESULTS" "${OUT:-}" <<'EOF'
import json, sys
from pathlib import Path

import pandas as pd
import torch

rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
print("| tree | round | epoch s | sweep s | final train loss |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['tree']} | {r['round']} | {r['epoch_s']:.4f} | {r['sweep_s']:.1f} | {r['final_train_loss']:.6f} |")
best = {t: {"epoch_s": min(r["epoch_s"] for r in rows if r["tree"] == t), "sweep_s": min(r["sweep_s"] for r in rows if r["tree"] == t)}
        for t in ("before", "after")}
for t, b in best.items():
    print(f"| {t} | best | {b['epoch_s']:.4f} | {b['sweep_s']:.1f} | |")
ratio = {k: best["after"][k] / best["before"][k] for k in ("epoch_s", "sweep_s")}
print(f"after / before (best rounds): epoch {ratio['epoch_s']:.3f}, sweep {ratio['sweep_s']:.3f}")
# Same configs, same curves: the first round's sweeps, run by run.
first = {r["tree"]: Path(r["runs"]) for r in rows if r["round"] == 1}
diff = {"runs": 0, "max_abs_diff_train_loss": 0.0, "max_abs_diff_val_acc": 0.0}
for path in sorted(first["before"].rglob("epochs.parquet")):
    a, b = pd.read_parquet(path), pd.read_parquet(first["after"] / path.relative_to(first["before"]))
    diff["runs"] += 1
    diff["max_abs_diff_train_loss"] = max(diff["max_abs_diff_train_loss"], float((a["train_loss"] - b["train_loss"]).abs().max()))
    diff["max_abs_diff_val_acc"] = max(diff["max_abs_diff_val_acc"], float((a["val_acc"] - b["val_acc"]).abs().max()))
print(f"sweep curves, before vs after: {diff}")
record = {"benchmark": "refactor_ab", "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
          "torch": torch.__version__, "rows": rows, "best": best, "after_over_before": ratio, "sweep_curves": diff}
if sys.argv[2]:
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    (Path(sys.argv[2]) / "refactor_ab.json").write_text(json.dumps(record, indent=2))
EOF
