"""`data` stage: generate the embedded `shapes` dataset, its manifest and its statistics report.

    python -m pipeline.make_data [--params params.yaml] [--out data/shapes]
        [--stats-md reports/data_stats.md] [--stats-png reports/figures/data_stats.png]

Rewrites <out>/{train,val,annotations} and <out>/manifest.json completely from `shapes` in params.yaml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tood.config import ShapesConfig, from_dict, load_params
from tood.shapes import dataset_stats, generate, write_manifest, write_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/shapes")
    parser.add_argument("--stats-md", default="reports/data_stats.md")
    parser.add_argument("--stats-png", default="reports/figures/data_stats.png")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    cfg = from_dict(ShapesConfig, params.get("shapes") or {}, str(args.params), "shapes")
    out = Path(args.out)
    (out / "manifest.json").unlink(missing_ok=True)  # never leave a manifest that describes older files
    start = time.perf_counter()
    summary = generate(cfg, out)
    seconds = time.perf_counter() - start
    write_manifest(cfg, out)
    stats = {split: dataset_stats(s["ann_file"]) for split, s in summary.items()}
    write_stats(stats, args.stats_md, args.stats_png)
    for split, s in summary.items():
        print(
            f"{split}: {s['num_images']} images, {s['num_annotations']} objects "
            f"({s['num_dropped_occluded']} dropped as >70% occluded), levels {stats[split]['fpn_levels']}"
        )
    print(f"generated in {seconds:.1f} s -> {out}; report {args.stats_md}, {args.stats_png}")


if __name__ == "__main__":
    main()
