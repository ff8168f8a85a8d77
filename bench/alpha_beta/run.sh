#!/bin/bash
# Table 4 measured: the five (alpha, beta) cells and the headline `tood` (alpha=1, beta=6) at seeds 0-2, all
# on one machine, with the grid's data, model and 24-epoch budget. Run from the root of a fresh clone:
#
#     bash bench/alpha_beta/run.sh bench/alpha_beta/<cpu>_<precision>
#
# It writes params_ab.yaml (params.yaml with seeds [0, 1, 2] for the headline and under each cell), makes
# data/ and the pretrained backbone (`dvc repro data pretrain`), trains the 18 runs two at a time with one
# thread each (the local executor's setting for two runs on two cores; each run logs to this clone's
# mlflow.db), then evaluates each variant into <out>/<variant>.json. List <out> under `stats.replications` in
# params.yaml and `dvc repro -s tabulate`: tables.md then judges Table 4 there. ~1 h 45 min on a 2-core AMD
# EPYC (Zen 4) in bf16; 3 min on the `quick` profile (a check that it runs, no result).
set -euo pipefail
out=${1:?usage: bash bench/alpha_beta/run.sh OUT_DIR}
cells="a05_b2 a05_b4 a05_b6 a1_b8 a15_b8"
export DVC_NO_ANALYTICS=1
source .venv/bin/activate
python - <<'PY'
import yaml
params = yaml.safe_load(open("params.yaml"))
params["seeds"] = [0, 1, 2]  # the headline's (the default's already)
for v in ("a05_b2", "a05_b4", "a05_b6", "a1_b8", "a15_b8"):
    params["variants"][v]["seeds"] = [0, 1, 2]
yaml.safe_dump(params, open("params_ab.yaml", "w"), sort_keys=False)
PY
dvc repro data pretrain
mkdir -p runs_ab logs_ab "$out"
for s in 0 1 2; do for v in tood $cells; do echo "$v $s"; done; done |
  xargs -P 2 -L 1 bash -c 'python -m pipeline.train_run --params params_ab.yaml --variant $0 --seed $1 \
    --out runs_ab/$0/seed$1 --threads 1 > logs_ab/$0-seed$1.log 2>&1 || { echo "$0 seed $1 failed: logs_ab/$0-seed$1.log"; exit 255; }'
for v in tood $cells; do
  python -m pipeline.evaluate_variant --params params_ab.yaml --variant $v --runs runs_ab/$v --out "$out/$v.json"
done
cp params_ab.yaml "$out/params.yaml"
