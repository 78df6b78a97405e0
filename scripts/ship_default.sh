#!/usr/bin/env bash
# Build models/default from a finished training run, as README "The shipped model" does. A model8
# run: light2 early heads fitted on the frozen network (20 epochs), then mixed fine-tuning of
# backbone and heads (30 epochs, lr 0.02). A run whose exits were trained with the network from the
# start (joint routing, the hybrid-* variants) skips both. Then every exit's classifier is
# re-balanced (rebalance, MiSLAS's stage 2, 10 epochs; for a joint run the folder cpu_study.sh
# uses), exported with each exit's tau and the thresholds calibrated on held-out training images
# (at most 1 point below threshold 1.0, with 95% confidence), and the accuracy-vs-MACs curve is
# drawn. A step that was cut resumes from its checkpoint when the script is run again; one that
# completed is kept.
#
#   scripts/ship_default.sh results/runs/model8-if100-seed0
#   scripts/ship_default.sh results/runs/hybrid-la-if100-seed0
#   EARLY_EXITS_AFTER="5 8 10" scripts/ship_default.sh results/runs/model8-if100-seed0  # fitted exits elsewhere
#
# SEED_MODELS="DIR ..." (exported models of the same recipe at other seeds, made by this script with
# another MODEL_OUT): the model's manifest and card record every seed's test accuracy and their spread.
#
# Smoke run (plumbing only): FIT_FLAGS="--max-batches 2 --max-test-samples 200" MODEL_OUT=/tmp/m \
#   FITS=/tmp/fits scripts/ship_default.sh RUN_DIR
set -euo pipefail
run=${1:?usage: scripts/ship_default.sh RUN_DIR}
name=$(basename "$run")
fits=${FITS:-results/fits}
model_out=${MODEL_OUT:-models/default}
read -r -a extra <<< "${FIT_FLAGS:-}"
read -r -a after <<< "${EARLY_EXITS_AFTER:-}"  # blocks (1-based, of 15) the fitted early heads follow
read -r -a seed_models <<< "${SEED_MODELS:-}"
seeds=()
if [ ${#seed_models[@]} -gt 0 ]; then seeds=(--seed-models "${seed_models[@]}"); fi
moved=() tag=""
if [ ${#after[@]} -gt 0 ]; then moved=(--early-exits-after "${after[@]}"); tag=$(printf -- '-%s' "${after[@]}"); tag=-after${tag#-}; fi

# step OUT COMMAND ARGS...: a fresh run of fit-exits or rebalance, the cut one in OUT resumed, or
# nothing where OUT completed.
step() {
  local out=$1; shift
  local resume=()
  if [ "$(python -m training status "$out" | cut -f1)" = completed ]; then
    echo "$out: completed, kept"; return
  fi
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  python -m training "$@" "${extra[@]}" --out "$out" "${resume[@]}"
}

routing=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["variant"]["routing"])' "$run/config.json")
if [ "$routing" = joint ]; then
  parent=$run
  rebalanced=$fits/$name-rebalance
else
  frozen=$fits/$name-fit-frozen-light2$tag
  parent=$fits/$name-fit-light2$tag-mixed30
  rebalanced=$parent-rebalance
  step "$frozen" fit-exits --checkpoint "$run/checkpoint.pt" --early-heads light2 "${moved[@]}" --epochs 20
  step "$parent" fit-exits --checkpoint "$frozen/checkpoint.pt" --mode mixed --epochs 30 --lr 0.02 --head-lr 0.02
fi
step "$rebalanced" rebalance --checkpoint "$parent/checkpoint.pt"
# Export beside the shipped model, then swap, so a failed export leaves the old one serving.
rm -rf "$model_out.new"
python -m training export --checkpoint "$rebalanced/checkpoint.pt" --out "$model_out.new" --calibrate-drop 1 \
    --name "$(basename "$model_out")" "${seeds[@]}"
if [ -e "$model_out" ]; then mv "$model_out" "$model_out.old"; fi
mv "$model_out.new" "$model_out"
rm -rf "$model_out.old"
python -m training curve --model "$model_out" --out "${CURVE_OUT:-results/plots/default_accuracy_vs_macs.png}"
