#!/usr/bin/env bash
# Train several variants concurrently on one GPU machine and pack the run directories into $OUT.
# Usage (on the device machine, from the repo root, with .carry/ holding the dataset archive):
#   [TRAIN_FLAGS="--data-path device --amp"] scripts/device_train.sh SECONDS_BUDGET variant:IF [variant:IF ...]
# A resumed run needs the flags it was started with (the committed partial runs used none).
# The first run listed is the priority one; every run writes checkpoints, so a run cut off by the
# budget can be continued later with `python -m training train ... --resume`.
set -u
budget=$1; shift
start=$(date +%s)
data=/tmp/cifar
python3 .carry/build_cifar10_batches.py "$data" >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" >>"$OUT/gpu.txt"
mkdir -p /tmp/runs
# Run directories carried in .carry/runs/ are continued with --resume.
[ -d .carry/runs ] && cp -r .carry/runs/. /tmp/runs/
pids=()
for spec in "$@"; do
  v=${spec%%:*}; f=${spec##*:}; dir=/tmp/runs/$v-if$f-seed0
  resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  PYTHONUNBUFFERED=1 python3 -m training train --variant "$v" --imbalance "$f" --device "${DEVICE:-cuda}" \
    --workers 3 --data-dir "$data" --out "$dir" "${resume[@]}" ${TRAIN_FLAGS:-} >>"/tmp/runs/$v-if$f.stdout" 2>&1 &
  pids+=($!)
done
while :; do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  [ $(( $(date +%s) - start )) -ge "$budget" ] && { echo "budget reached, stopping runs"; kill "${pids[@]}" 2>/dev/null; sleep 2; break; }
  sleep 5
done
for d in /tmp/runs/*/; do n=$(basename "$d"); printf '%s: ' "$n"; tail -n 1 "$d/train.log" 2>/dev/null | cut -c1-140; done
# Metrics and logs of every run in one archive; checkpoints in archives of a few runs each.
(cd /tmp/runs && tar czf "$OUT/runs-metrics.tar.gz" --exclude=checkpoint.pt .)
ls -d /tmp/runs/*/ | xargs -n 4 | nl | while read -r i dirs; do
  (cd /tmp/runs && tar czf "$OUT/ckpt-$i.tar.gz" $(for d in $dirs; do [ -f "$d/checkpoint.pt" ] && echo "$(basename "$d")/checkpoint.pt"; done))
done
ls -la "$OUT"
