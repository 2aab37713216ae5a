#!/usr/bin/env bash
# Issue 22's runs for the claims fixed in advance (analysis/claims.yaml), as one job list run by JOBS
# parallel workers (default 2, one thread each).  A job is `python -m ddmd_lab sweep --claim C --seeds S`
# (= `make sweep CLAIM=C SEEDS=S`): every term of claim C that has no finished run at seed S yet, so the
# list can be re-run or extended without repeating a run.  The interaction claims name all four groups
# of their grid (both normalisers x #4 / #1), so running them covers the two primary contrasts too.
#   SEEDS="0 1 2" bash analysis/sweeps/decide.sh            # the pilot; then make power CLAIM=<name>
#   SEEDS="$(seq -s ' ' 0 13)" bash analysis/sweeps/decide.sh   # up to the seeds the power analysis asks
#   CLAIMS="toy_exact_normaliser_x_schedule" SEEDS=... bash analysis/sweeps/decide.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
# one job per (claim list, seed); claims that share a term go in one list (comma-separated), so it runs once
CLAIMS=${CLAIMS:-"fashion_normaliser_x_schedule toy_exact_normaliser_x_schedule fig4a_noisy_tau_lower_frequencies,fig4a_clean_tau_alone_collapses"}
PY=${PY:-.venv/bin/python}
# no end-of-run Inception FID (fashion.yaml's fid_samples: 2000 takes ~10 min a run on 2 cores); the claims
# read the classifier metrics' scores
EXTRA=${EXTRA:-"--set fid_samples=0"}

jobs() {
  # (no trailing blank: xargs -L would join the next line to this one)
  for s in $SEEDS; do for c in $CLAIMS; do echo "--claim $c --seeds $s${EXTRA:+ $EXTRA}"; done; done
}

mkdir -p runs/sweep_logs
jobs | nl -w3 -s' ' | xargs -P "$JOBS" -L 1 bash -c '
  n=$0; log=runs/sweep_logs/decide_job$n.log
  echo "[$(date +%H:%M:%S)] start job $n: $*"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 '"$PY"' -m ddmd_lab sweep "$@" > "$log" 2>&1 \
    && echo "[$(date +%H:%M:%S)] done  job $n" || echo "[$(date +%H:%M:%S)] FAILED job $n (see $log)"'
