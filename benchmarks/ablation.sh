#!/usr/bin/env bash
# The AstroLoc ablation on the synthetic demo, as DVC experiments (docs/astroloc.md):
# EarthLoc config, AstroLoc config, and each AstroLoc loss alone; every run trains and is
# evaluated with the nadir restriction (set `demo`) and lost in space (`demo_lost_in_space`:
# the same queries against every fetched region). Prints the table at the end.
#
# Usage: benchmarks/ablation.sh [ITERATIONS]
#   ITERATIONS (optional) overrides train.iterations for a quicker, reduced ablation.
# Runs in the workspace (`dvc exp run`, one experiment after the other: the tile store and
# the training checkpoints are persisted outputs), then restores params.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

common=(-S 'evaluate.sets=[demo,demo_lost_in_space]')
if [[ $# -ge 1 ]]; then
  common+=(-S "train.iterations=$1")
fi
targets=(evaluate@demo evaluate@demo_lost_in_space)

cp params.yaml .ablation_params.yaml.bak
trap 'mv .ablation_params.yaml.bak params.yaml' EXIT

run() {  # name earthloc_ms photo_pairs weighted_clusters
  dvc exp remove "$1" >/dev/null 2>&1 || true
  dvc exp run -n "$1" "${common[@]}" \
    -S "astroloc.losses.earthloc_ms=$2" \
    -S "astroloc.losses.photo_pairs=$3" \
    -S "astroloc.losses.weighted_clusters=$4" \
    "${targets[@]}"
}

run earthloc          true  false false
run astroloc          false true  true
run photo_pairs       false true  false
run weighted_clusters false false true

dvc exp show --no-pager --md --only-changed \
  --keep 'astroloc.losses' --keep 'train.iterations' --keep 'data/eval/.*metrics.json' || true
python benchmarks/ablation_table.py earthloc astroloc photo_pairs weighted_clusters
