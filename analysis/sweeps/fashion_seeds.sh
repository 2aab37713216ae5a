#!/usr/bin/env bash
# Issue 14's seeded fashion ablations, as one job list run by JOBS parallel workers (default 2,
# one thread each: on a 2-core machine two single-thread runs finish ~1.3x sooner than one
# two-thread run after another).  Every job is one `python -m ddmd_lab ablation` call, equal to
# the `make sweep` line printed beside each block.  Jobs run in priority order; within a block
# seed-major, so a list cut short still holds paired comparisons.
#   bash analysis/sweeps/fashion_seeds.sh            # everything (~2 h on 2 cores)
#   BLOCKS="core normaliser" bash analysis/sweeps/fashion_seeds.sh
#   START=11 bash analysis/sweeps/fashion_seeds.sh   # resume a list cut short: skip its first 10 jobs
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
BLOCKS=${BLOCKS:-"core normaliser ca_arms convergence tau_ranges lr_fake"}
START=${START:-1}
PY=${PY:-.venv/bin/python}
LEN=500                       # critic steps = 100 generator steps (ttur 5): the sweeps' length
COMMON="--set eval_every=100 --set fid_samples=0"   # Inception FID: 7.5 images/s on 2 cores, too slow for sweeps; eval every 100: the curves

jobs() {
  for block in $BLOCKS; do
    case $block in
      ca_arms)      # CA alone and its other regularisers, at half length (CA alone explodes within it)
        for s in $SEEDS; do for a in ca_only ca_meanvar ca_gan; do
          echo "--arm $a --steps 250 --seed $s $COMMON"; done; done ;;
      convergence)  # make ablation ARM=<a> SCALE=fashion STEPS=1000 SEED=0 SET="eval_every=100 fid_samples=1000"
                    # (seed 0 of both arms unless CONV_SEEDS="1 2" / CONV_ARMS=decoupled_hybrid name others)
        for s in ${CONV_SEEDS:-0}; do for a in ${CONV_ARMS:-coupled decoupled_hybrid}; do
          echo "--arm $a --steps 1000 --seed $s --set eval_every=100 --set fid_samples=1000"; done; done ;;
      core)         # make sweep SCALE=fashion STEPS=500 SEEDS=0,1,2 ARMS=coupled,decoupled_full,decoupled_constrained,decoupled_hybrid,dm_only SET="eval_every=100 fid_samples=0"
        for s in $SEEDS; do for a in coupled decoupled_full decoupled_constrained decoupled_hybrid dm_only; do
          echo "--arm $a --steps $LEN --seed $s $COMMON"; done; done ;;
      normaliser)   # make sweep ... ARMS=coupled,decoupled_hybrid SET="arm.normaliser=per_loss ..."
        for s in $SEEDS; do for a in coupled decoupled_hybrid; do
          echo "--arm $a --steps $LEN --seed $s $COMMON --set arm.normaliser=per_loss"; done; done ;;
      tau_ranges)   # Fig. 4a: 1-step CA alone with tau_CA in [0,0.05], [0,1], [0.7,1] (experiments/arms/ca_tau_*.yaml;
                    # [0,0.1] and [0,0.3] exist too: ARMS=... in make sweep)
        for s in $SEEDS; do for a in ca_tau_0-0.05 ca_tau_0-1 ca_tau_0.7-1; do
          echo "--arm $a --steps 250 --seed $s $COMMON"; done; done ;;
      lr_fake)      # the fake model's learning rate x 0.25 and x 4 (fashion: 1e-4; LR_FAKES="2.5e-5" runs x 0.25 only)
        for s in $SEEDS; do for lr in ${LR_FAKES:-2.5e-5 4e-4}; do for a in coupled decoupled_hybrid; do
          echo "--arm $a --steps $LEN --seed $s $COMMON --set lr_fake=$lr"; done; done; done ;;
      *) echo "unknown block $block" >&2; exit 2 ;;
    esac
  done
}

mkdir -p runs/sweep_logs
jobs | nl -w3 -s' ' | tail -n +"$START" | xargs -P "$JOBS" -L 1 bash -c '
  n=$0; log=runs/sweep_logs/job$n.log
  echo "[$(date +%H:%M:%S)] start job $n: $*"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 '"$PY"' -m ddmd_lab ablation --scale fashion "$@" > "$log" 2>&1 \
    && echo "[$(date +%H:%M:%S)] done  job $n" || echo "[$(date +%H:%M:%S)] FAILED job $n (see $log)"'
