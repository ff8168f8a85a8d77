"""Switch the whole pipeline between the embedded default and the paper's COCO recipe.

    python -m pipeline.profile coco      # COCO 2017, ResNet-50 (ImageNet weights), 1333x800, 12 epochs
    python -m pipeline.profile quick     # every stage on a tiny budget: tries the pipeline in minutes,
                                         # its tables support no conclusions
    python -m pipeline.profile shapes    # back to the embedded synthetic default

A profile is a complete params file in profiles/; this validates every variant of it (so a bad profile
fails here, not an hour into training) and copies it over params.yaml. `dvc repro` then re-runs every
stage whose params changed, which for a profile switch is all of them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import load_params, resolve_run_config, variant_names

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def main(argv: list[str] | None = None) -> None:
    names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    parser = argparse.ArgumentParser(
        prog=prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=names, help="profile to copy over params.yaml (profiles/<name>.yaml)")
    parser.add_argument("--params", default="params.yaml", help="the params file to overwrite")
    args = parser.parse_args(argv)

    source = PROFILES / f"{args.name}.yaml"
    params = load_params(source)
    for variant in variant_names(params):
        resolve_run_config(params, variant, where=str(source))
    shutil.copyfile(source, args.params)
    print(f"{args.params} <- {source.relative_to(PROFILES.parent)} ({len(variant_names(params))} variants)")


if __name__ == "__main__":
    run(main)
