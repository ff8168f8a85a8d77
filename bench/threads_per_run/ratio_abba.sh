#!/usr/bin/env bash
# Local executor (NEW rev) against the sequential in-process train stage (BASE rev), back to back in ABBA
# order: one 3-seed train_tood stage of the default profile at 2 epochs (176 steps per run), the quick
# profile's 10 s backbone. Figures: bench/RESULTS.md §7. Usage (repo root, nothing else of yours running):
#   bash bench/threads_per_run/ratio_abba.sh 19806b8 HEAD
set -e
BASE=${1:-19806b8}; NEW=${2:-HEAD}; REPO=$(pwd); PY=$REPO/.venv/bin/python
export PATH=$REPO/.venv/bin:$PATH
for side in base new; do
  d=/tmp/ratio_$side; rm -rf $d; git clone -q "$REPO" $d
  git -C $d checkout -q "$([ $side = base ] && echo "$BASE" || git -C "$REPO" rev-parse "$NEW")"
  (cd $d && $PY - <<'PYEOF'
import yaml
p = yaml.safe_load(open("params.yaml")); q = yaml.safe_load(open("profiles/quick.yaml"))
p["pretrain"] = q["pretrain"]  # a 10 s backbone: pretraining is not what is measured
p["train"]["epochs"] = 2       # 2 x 88 = 176 steps per run (default: 12 epochs)
p["assign"]["warmup_epochs"] = 1
p["optim"]["steps"] = [1]
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
PYEOF
  $PY -m dvc repro -q pretrain data)
done
i=0
for side in base new new base; do
  i=$((i+1)); cd /tmp/ratio_$side; rm -rf runs/.work
  echo "$i $side start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  $PY -m bench.grid_time --force --single-item --json /tmp/ratio_${side}_$i.json train_tood > /tmp/ratio_${side}_$i.log 2>&1
  echo "$i $side end $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
done
