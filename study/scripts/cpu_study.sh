#!/usr/bin/env bash
# The study on a CPU, one run at a time (two torch threads). First the runs a GPU started
# (study/scripts/device_study.py; they resume here on the same flags): the product candidates, then
# `elf` IF 100 (the last of the baselines that say what our data copy costs) and hybrid-ce (the
# candidate the others' numbers pointed to); then the cut runs of the report's table nearest to
# their end (model8's fast-path parity run; model13 first of the rest, the previous default's
# network at IF 10, whose exits scripts/ship_default.sh fits), then hybrid-lt-sam, then model7; then
# the rest of the report's table in its order: models 14, 15, 16 (full power: 25-68 s an epoch on a
# 2-core AVX-512 CPU), 1-6, the baselines at IF 50/10 and erm at IF 1; then the shipped recipe
# (hybrid-lt-mid, models/default) at IF 50 and IF 10.
# The product candidates' choice is made on held-out images (`calibrate`), never on the test set.
# Every run takes `train`'s CPU default, the fast path (bf16 only on a CPU with bf16 instructions:
# training/config.py).
# Finished runs (completed or diverged) are skipped, checkpointed ones resumed, so the script is
# simply started again in the next session. Run it in the background, niced:
#   nohup nice -n 10 study/scripts/cpu_study.sh > runs/cpu_study.log 2>&1 &
# Pause it while benchmarking: kill -STOP / -CONT the `training train` process (runs/study.pid).
# Stop it: `pkill -f cpu_study.sh; kill $(cat runs/study.pid)`: the run ends its epoch under way,
# checkpoints it and exits (SIGTERM, training/loop.py); the next start resumes it.
set -u
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
root=${RUNS:-results/runs}
fits=${FITS:-results/fits}
# variant:IF[:run directory name]
plan=(model8-reslt-official:100 hybrid-lt:100 hybrid-la:100 model12:50 hybrid-lt-mid:100 elf:100 hybrid-ce:100
      erm:100 reslt:100 model8-linear:100
      model8:100:model8-if100-seed0-cpufast model13:10 hybrid-lt-sam:100
      model7:100 model14:100 model15:50 model16:10 model1:100 model2:100 model3:100 model4:100 model5:100 model6:100
      reslt:50 reslt:10 elf:50 elf:10 erm:1 hybrid-lt-mid:50 hybrid-lt-mid:10)
mkdir -p runs
# One study at a time: a second start would find the run under way refused (rundir.claim) and train
# the plan's next run beside it. The lock passes to the runs started here, so a study stopped with
# pkill while its run ends its epoch still counts as running.
exec 9>runs/cpu_study.lock
if ! flock -n 9; then echo "$(date -u +%FT%TZ) study/scripts/cpu_study.sh is already running (runs/cpu_study.lock)"; exit 1; fi
# On a CPU without bf16 instructions every new run would take fp32 for all its epochs, 3.3x the cost
# of bf16 on the project's AVX-512 BF16 machine (results/BENCHMARKS.md): wait for that machine.
if [ "$($py -c 'from training.config import cpu_has_bf16; print(cpu_has_bf16())')" != True ] && [ "${STUDY_FP32:-0}" != 1 ]; then
  echo "$(date -u +%FT%TZ) this CPU has no bf16 instructions: the study waits for one that has (STUDY_FP32=1 runs it in fp32)"
  exit 0
fi
status() { $py -m training status "$1" | cut -f1; }
# The product candidates (jointly trained exits) go on to `rebalance`, their second stage, into
# results/fits/<run>-rebalance; the choice between them is made there, on held-out images.
rebalance_product() {
  local run=$1 out=$fits/$(basename "$1")-rebalance resume=()
  case $(status "$out") in completed|diverged) return ;; esac
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) rebalance $run ${resume[*]}"
  PYTHONUNBUFFERED=1 $py -m training rebalance --checkpoint "$run/checkpoint.pt" --out "$out" "${resume[@]}" \
    >>"runs/$(basename "$out").out" 2>&1 &
  echo $! >runs/study.pid
  wait $!
  echo "$(date -u +%FT%TZ) end $out exit $? status $(status "$out")"
}
for entry in "${plan[@]}"; do
  IFS=: read -r variant imbalance name <<<"$entry"
  dir=$root/${name:-$variant-if$imbalance-seed0}
  case $(status "$dir") in
    completed) [[ $variant == hybrid-* ]] && rebalance_product "$dir"; continue ;;
    diverged) continue ;;
  esac
  resume=()
  # How often a new run meets the test set: the variant table says (Variant.study_eval_every).
  every=(--eval-every "$($py -c "import sys; from training.variants import get_variant
print(get_variant(sys.argv[1]).study_eval_every)" "$variant")")
  if [ -f "$dir/checkpoint.pt" ]; then
    # A bf16 run goes on only on a CPU with bf16 instructions (elsewhere bf16 is emulated, 10x slower).
    here=$($py -c "import json, sys; from training.config import cpu_has_bf16
print(not json.load(open(sys.argv[1]))['config']['amp'] or cpu_has_bf16())" "$dir/config.json")
    if [ "$here" != True ]; then echo "$(date -u +%FT%TZ) skip $dir: a bf16 run, and this CPU has no bf16"; continue; fi
    resume=(--resume) every=()  # on the run's own path and evaluation interval (an fp32 run stays fp32 here)
  fi
  echo "$(date -u +%FT%TZ) start $dir ${resume[*]}"
  PYTHONUNBUFFERED=1 $py -m training train --variant "$variant" --imbalance "$imbalance" --seed 0 \
    "${every[@]}" --out "$dir" "${resume[@]}" >>"runs/$(basename "$dir").out" 2>&1 &
  echo $! >runs/study.pid
  wait $!; rc=$?
  echo "$(date -u +%FT%TZ) end $dir exit $rc status $(status "$dir")"
  [[ $variant == hybrid-* ]] && [ "$(status "$dir")" = completed ] && rebalance_product "$dir"
done
