#!/usr/bin/env bash
# The open GPU measurements in one device call, results packed into $OUT, in the order the issues
# give (issue 8, then issue 4):
#   1. model8 IF 100, 200 epochs, corrected loss rule, on the fast path, timed as a user would run
#      it (fresh process, fresh compile cache, data loading included), alone on the GPU;
#   2. the erm controls (IF 1 and IF 100: the dataset copy's penalty), then model7 / 12 / 13;
#   3. the study's other runs with `grid` on the fast path until the budget is spent (checkpointed:
#      a cut-off run is resumed by the next call when .carry/runs holds it).
# Usage, on the device machine from the repo root, .carry/ holding the dataset archive:
#   scripts/device_study.sh SECONDS_BUDGET [PARALLEL]
# DEVICE=cpu SMOKE_FLAGS="--epochs 1 --max-batches 2 ..." try the plumbing on a CPU first.
# The fast model8 run is written under the grid's own name (model8-if100-seed0), so the grid skips
# it; it belongs in results/runs/model8-if100-seed0-fast beside a reference-path run of the same rule.
set -u
budget=$1; parallel=${2:-6}
start=$(date +%s)
data=/tmp/cifar
runs=/tmp/runs
python3 .carry/build_cifar10_batches.py "$data" >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} >"$OUT/gpu.txt" 2>&1
mkdir -p "$runs"
[ -d .carry/runs ] && cp -r .carry/runs/. "$runs/"
left() { echo $(( budget - ($(date +%s) - start) )); }

# 1 + 2. CUDA graphs first; if that run fails outright, plain torch.compile (compile errors
# themselves already fall back to eager inside the trainer and are noted in metrics.json).
device=${DEVICE:-cuda}
smoke=${SMOKE_FLAGS:-}
fast=$runs/model8-if100-seed0
if [ ! -f "$fast/metrics.json" ] || ! grep -q '"status": "completed"' "$fast/metrics.json"; then
  for mode in reduce-overhead default; do
    rm -rf "$fast"
    t0=$(date +%s%N)
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-$mode PYTHONUNBUFFERED=1 timeout "$(left)" \
      python3 -m training train --variant model8 --imbalance 100 --seed 0 --device "$device" --data-dir "$data" \
      $smoke --data-path device --amp --channels-last --compile "$mode" --out "$fast" >"$OUT/model8-fast-$mode.log" 2>&1
    rc=$?
    wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "{\"mode\": \"$mode\", \"exit_code\": $rc, \"wall_ms\": $wall_ms}" >>"$OUT/speed.jsonl"
    [ $rc = 0 ] && break
  done
  compile=$mode
else
  compile=$(python3 -c "import json; print(json.load(open('$fast/config.json'))['config']['compile'])")
fi
tail -n 3 "$fast/train.log" | cut -c1-200

# 2 + 3. Controls, then model7/12/13, then the rest of the study, several runs at a time, until the
# budget is spent.
for part in "--variants erm" "--variants model7 model12 model13" ""; do
  remaining=$(( $(left) - 30 ))
  [ "$remaining" -gt 60 ] || break
  PYTHONUNBUFFERED=1 timeout "$remaining" python3 -m training grid --device "$device" --data-dir "$data" --out "$runs" \
    --parallel "$parallel" $part -- $smoke --data-path device --amp --channels-last --compile "$compile" >>"$OUT/grid.log" 2>&1
  echo "grid ${part:-(whole study)} exit code $? after $(( $(date +%s) - start ))s"
done
for d in "$runs"/*/; do
  printf '%s: %s\n' "$(basename "$d")" "$(grep '^Epoch' "$d/train.log" 2>/dev/null | tail -n 1 | cut -c1-120)"
done
# Metrics and logs of every run in one archive; checkpoints in archives of a few runs each.
(cd "$runs" && tar czf "$OUT/runs-metrics.tar.gz" --exclude=checkpoint.pt .)
ls -d "$runs"/*/ | xargs -n 5 | nl | while read -r i dirs; do
  (cd "$runs" && tar czf "$OUT/ckpt-$i.tar.gz" $(for d in $dirs; do [ -f "$d/checkpoint.pt" ] && echo "$(basename "$d")/checkpoint.pt"; done))
done
ls -la "$OUT"
