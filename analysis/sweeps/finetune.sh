#!/usr/bin/env bash
# Issue 16's LoRA fine-tuning sweep on fashion: a `coupled` and a `decoupled_hybrid` student (issue 14's core runs,
# seeds 0 1 2) each learn the digit 7 as label 10.  Each job is one `python -m ddmd_lab finetune` call, equal to
#   make finetune RUN=<student> DATA=mnist:7 SET="lora.rank=R lr=LR train_guidance=G seed=S steps=$STEPS"
# Every fine-tune writes its guidance 0 / 1.5 / 3 x steps 4 / 8 sample grids (before and after) in grids.json:
# the sampling-guidance axis needs no jobs of its own.  Then `make finetune-report` writes reports/finetune/.
#
# DESIGN=center (default): one factor at a time around the center (rank 8, lr 1e-4, train_guidance 0): the center,
#   rank 4 and 32, lr 1e-5 and 1e-3, train_guidance 1.5 and 3 -- 7 settings x 2 arms x 3 seeds = 42 jobs, ~65 min
#   with JOBS=2 (3 min per job measured).  Every claim of the report compares one factor's levels with the others
#   fixed, which is what this design holds; it cannot show interactions (rank x lr).
# DESIGN=grid: the full rank {4, 8, 32} x lr {1e-5, 1e-4, 1e-3} x train_guidance {0, 1.5, 3} (162 jobs, ~4 h).
#
# Students: fine-tune seed S uses the newest *finished* run (checkpoints/final.ckpt) of its arm with seed S and
# issue 14's core settings (STUDENT, below), so seeds pair a student with its own fine-tunes; missing students
# are listed with the command that makes them, and nothing starts.  Pin them with COUPLED_s0=<run> etc.
#   bash analysis/sweeps/finetune.sh                          # the center design
#   DESIGN=grid RANKS=8 LRS=1e-4 SEEDS=0 bash analysis/sweeps/finetune.sh
# Jobs: JOBS parallel workers (default 2), one thread each, as analysis/sweeps/fashion_seeds.sh; order:
# seed-major, then arm, so a sweep cut short still holds paired comparisons; START= skips the first jobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-2}
DESIGN=${DESIGN:-center}
START=${START:-1}
SEEDS=${SEEDS:-"0 1 2"}
ARMS=${ARMS:-"coupled decoupled_hybrid"}
RANKS=${RANKS:-"4 8 32"}
LRS=${LRS:-"1e-5 1e-4 1e-3"}
GUIDANCES=${GUIDANCES:-"0 1.5 3"}
STEPS=${STEPS:-300}            # fine-tune steps (batch 32, the students' batch): at lr 1e-3 the new class is learned by ~150
DATA=${DATA:-mnist:7}          # a concept the fashion student never saw, as label 10
PY=${PY:-.venv/bin/python}
COMMON="--set eval_every=50 --set progress_bar=false"

# which distilled runs count as "the" student: issue 14's core settings (fashion_seeds.sh's core block), so a variant
# (another normaliser, lr_fake or length) is never picked; keys of config.yaml, dotted for the arm's
STUDENT=${STUDENT:-"steps=500 student_steps=4 lr_fake=0.0001 lr_generator=0.0001 alpha=2.0 arm.normaliser=shared"}

student() {  # student ARM SEED -> the newest finished run of ARM and SEED with the STUDENT settings (or empty)
  local var; var="$(echo "$1" | tr a-z A-Z)_s$2"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  "$PY" - "$1" "$2" $STUDENT <<'PYEOF'
import sys, yaml
from pathlib import Path
arm, seed, wanted = sys.argv[1], int(sys.argv[2]), dict(kv.split("=", 1) for kv in sys.argv[3:])
def get(cfg, key):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg
found = []
for ckpt in sorted(Path("runs/fashion", arm).glob("*/checkpoints/final.ckpt")):
    cfg = yaml.safe_load((ckpt.parents[1] / "config.yaml").read_text())
    if cfg["seed"] == seed and all(str(get(cfg, k)) == v or (isinstance(get(cfg, k), float) and get(cfg, k) == float(v))
                                   for k, v in wanted.items()):
        found.append(ckpt.parents[1])
print(found[-1] if found else "")
PYEOF
}

missing=0
for s in $SEEDS; do for a in $ARMS; do
  if [ -z "$(student "$a" "$s")" ]; then
    echo "no finished $a student with seed $s: make ablation SCALE=fashion ARM=$a SEED=$s STEPS=500 SET=\"eval_every=100 fid_samples=0\"" >&2
    missing=1
  fi
done; done
[ "$missing" = 0 ] || exit 2

jobs() {
  for s in $SEEDS; do for a in $ARMS; do
    run=$(student "$a" "$s")
    settings | while read -r r lr g; do
      echo "--run $run --data $DATA --set lora.rank=$r --set lr=$lr --set train_guidance=$g --set seed=$s --set steps=$STEPS $COMMON"
    done
  done; done
}

settings() {  # "rank lr train_guidance" lines of the design
  case $DESIGN in
    grid) for r in $RANKS; do for lr in $LRS; do for g in $GUIDANCES; do echo "$r $lr $g"; done; done; done ;;
    center)
      echo "8 1e-4 0"
      for r in $RANKS; do [ "$r" = 8 ] || echo "$r 1e-4 0"; done
      for lr in $LRS; do [ "$lr" = 1e-4 ] || echo "8 $lr 0"; done
      for g in $GUIDANCES; do [ "$g" = 0 ] || echo "8 1e-4 $g"; done ;;
    *) echo "DESIGN is center or grid, not $DESIGN" >&2; exit 2 ;;
  esac
}

mkdir -p runs/sweep_logs
jobs | nl -w3 -s' ' | tail -n +"$START" | xargs -P "$JOBS" -L 1 bash -c '
  n=$0; log=runs/sweep_logs/finetune$n.log
  echo "[$(date +%H:%M:%S)] start job $n: $*"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 '"$PY"' -m ddmd_lab finetune "$@" > "$log" 2>&1 \
    && echo "[$(date +%H:%M:%S)] done  job $n" || echo "[$(date +%H:%M:%S)] FAILED job $n (see $log)"'
