"""Stage `check_params`: validate every key of params.yaml before any other stage runs.

    python -m pipeline.check_params --params params.yaml --stamp data/params.checked

DVC re-runs a stage only when a param it lists changes, so a misspelt key that no stage lists (`alhpa: 0.5`)
used to be ignored: `dvc repro` ran nothing and exited 0. This stage depends on the whole params.yaml file,
so any edit re-runs it (about a second); it resolves every variant with tood.config's strict loader, which
rejects an unknown key, a wrong type or an out-of-range value anywhere, naming it.

--stamp is written only when the check passes, and always with the same bytes. Every stage without another
upstream stage depends on it, so nothing starts before the check has passed, and since DVC sees an unchanged
dependency, the check itself never makes a stage re-run: a stage re-runs for the params it lists, as before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import load_executor_config, load_params, resolve_run_config, variant_names
from tood.engine.executor import local_plan

STAMP = "params.yaml passed pipeline.check_params (every key known, every value valid)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file to validate")
    parser.add_argument(
        "--stamp", default="data/params.checked", type=Path, help="file written (constant bytes) when valid"
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    names = variant_names(params)
    executor = load_executor_config(params, where=str(args.params))
    for variant in names:
        cfg = resolve_run_config(params, variant, where=str(args.params))
        local_plan(executor.local, runs=1, cores=1, num_threads=cfg.train.num_threads)  # they agree
    args.stamp.parent.mkdir(parents=True, exist_ok=True)
    args.stamp.write_text(STAMP)
    print(f"{args.params}: valid ({len(names)} variants)")
    return 0


if __name__ == "__main__":
    run(main)
