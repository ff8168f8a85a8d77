"""Switch the whole pipeline between the embedded default, the extended grid and the paper's COCO recipe.

    python -m pipeline.profile coco            # COCO 2017, ResNet-50 (ImageNet weights), 1333x800, 12 epochs
    python -m pipeline.profile quick           # every stage on a tiny budget: tries the pipeline in minutes,
                                               # its tables support no conclusions
    python -m pipeline.profile extended        # the default grid plus issue 20's runs (top-m sweep, TAL and
                                               # TAL + TAP at 1.5x, Table 2's assignment schemes)
    python -m pipeline.profile quick_extended  # both: every stage of the extended grid on the tiny budget
    python -m pipeline.profile shapes          # back to the embedded synthetic default

A profile is a complete params file in profiles/; this validates every variant of it (so a bad profile
fails here, not an hour into training) and copies it over params.yaml. `dvc repro` then re-runs every
stage whose params changed, which for a profile switch is all of them (a variant whose settings are the
same in both profiles keeps its run key and is restored from the run cache, not trained again).

dvc.yaml's `tabulate` stage lists one metrics file and one curves file per variant (DVC cannot template a
list into deps); when a profile has other variants than the ones listed, this rewrites those two lists in
the dvc.yaml beside the params file, and nothing else in it. Back on `shapes`, dvc.yaml is as committed.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import load_params, resolve_run_config, variant_names

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
TABULATE_DEP = re.compile(r"^(\s+)- reports/(metrics|curves)/[\w-]+\.(json|csv)\s*$")


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
    variants = variant_names(params)
    for variant in variants:
        resolve_run_config(params, variant, where=str(source))
    shutil.copyfile(source, args.params)
    print(f"{args.params} <- {source.relative_to(PROFILES.parent)} ({len(variants)} variants)")
    dvc_yaml = Path(args.params).with_name("dvc.yaml")
    if dvc_yaml.is_file():
        text = dvc_yaml.read_text()
        synced = sync_tabulate_deps(text, variants)
        if synced != text:
            dvc_yaml.write_text(synced)
            print(f"{dvc_yaml}: the tabulate stage now lists the metrics and curves of these {len(variants)}")


def sync_tabulate_deps(dvc_yaml: str, variants: list[str]) -> str:
    """dvc.yaml's text with the tabulate stage's reports/metrics/<v>.json and reports/curves/<v>.csv deps
    listing exactly `variants`, in their order, where the old lists stood; every other line unchanged."""
    lines = dvc_yaml.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "  tabulate:"), None)
    if start is None:
        raise ValueError("dvc.yaml has no `tabulate` stage")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i])), len(lines))
    out, written = lines[:start], set()
    for line in lines[start:end]:
        match = TABULATE_DEP.match(line)
        if match is None:
            out.append(line)
            continue
        indent, kind, ext = match.groups()
        if kind not in written:  # the first line of a list stands for all of it
            out += [f"{indent}- reports/{kind}/{v}.{ext}\n" for v in variants]
            written.add(kind)
    if written != {"metrics", "curves"}:
        raise ValueError(
            f"dvc.yaml's tabulate stage lists no reports/{{metrics,curves}} deps: {sorted(written)}"
        )
    return "".join(out + lines[end:])


if __name__ == "__main__":
    run(main)
