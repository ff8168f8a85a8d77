"""Stage `check_params`: validate every key of params.yaml before any other stage runs.

    python -m pipeline.check_params --params params.yaml --out data/data_config.json

DVC re-runs a stage only when a param it lists changes, so a misspelt key that no stage lists (`alhpa: 0.5`)
used to be ignored: `dvc repro` ran nothing and exited 0. This stage depends on the whole params.yaml file,
so any edit re-runs it (about a second); it resolves every variant with tood.config's strict loader, which
rejects an unknown key, a wrong type or an out-of-range value, naming it.

--out holds the resolved `data` and `shapes` sections, the ones the `data` stage reads. The `data` stage
depends on it, and every other stage comes after `data`, so nothing runs before the check passes; and the
file's bytes change only when those resolved values do, so a valid edit elsewhere re-runs nothing extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pipeline.cli import run
from tood.config import HEADLINE, load_params, resolve_run_config, variant_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file to validate")
    parser.add_argument(
        "--out", default="data/data_config.json", type=Path, help="resolved data + shapes sections (JSON)"
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    names = variant_names(params)
    for variant in names:
        resolve_run_config(params, variant, where=str(args.params))
    cfg = resolve_run_config(params, HEADLINE, where=str(args.params))
    resolved = {"data": dataclasses.asdict(cfg.data), "shapes": dataclasses.asdict(cfg.shapes)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(resolved, indent=1, sort_keys=True) + "\n")
    print(f"{args.params}: valid ({len(names)} variants)")
    return 0


if __name__ == "__main__":
    run(main)
