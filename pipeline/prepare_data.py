"""Stage `data`: make the dataset params.yaml names ready and write the manifest downstream stages depend on.

    python -m pipeline.prepare_data [--params params.yaml] [--manifest data/manifest.json]
        [--stats-md reports/data_stats.md] [--stats-png reports/figures/data_stats.png]

`data.dataset: shapes` generates the embedded synthetic set (tood/shapes.py); `coco2017` downloads, verifies
and extracts the official archives (tood/download.py). Either way DVC tracks only the small manifest, never
the image tree (a 120k-file dep makes every `dvc repro` status check take seconds per stage).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tood.config import HEADLINE, load_params, resolve_data_root, resolve_run_config
from tood.download import prepare_coco2017
from tood.shapes import dataset_stats, generate, write_manifest, write_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="data/manifest.json")
    parser.add_argument("--stats-md", default="reports/data_stats.md")
    parser.add_argument("--stats-png", default="reports/figures/data_stats.png")
    parser.add_argument("--archives-dir", default=None, help="coco2017: folder with pre-downloaded zips")
    args = parser.parse_args(argv)

    cfg = resolve_run_config(load_params(args.params), HEADLINE, where=args.params)
    root = resolve_data_root(cfg.data.root)
    manifest = Path(args.manifest)
    manifest.unlink(missing_ok=True)  # never leave a manifest that describes older files
    manifest.parent.mkdir(parents=True, exist_ok=True)
    if cfg.data.dataset == "shapes":
        generate(cfg.shapes, root)
        shutil.copyfile(write_manifest(cfg.shapes, root), manifest)
    else:
        prepare_coco2017(root, manifest_path=manifest, archives_dir=args.archives_dir)
    splits = {"train": cfg.data.train_ann, "val": cfg.data.val_ann}
    stats = {split: dataset_stats(root / ann) for split, ann in splits.items()}
    write_stats(stats, args.stats_md, args.stats_png)
    for split, s in stats.items():
        print(f"{split}: {json.dumps(s.get('fpn_levels'))}")
    print(f"{cfg.data.dataset} ready under {root}; manifest {manifest}")


if __name__ == "__main__":
    main()
