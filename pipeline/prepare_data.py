"""Stage `data`: make the dataset params.yaml names ready and write the manifest downstream stages depend on.

    python -m pipeline.prepare_data [--params params.yaml] [--manifest data/manifest.json]
        [--stats-md reports/data_stats.md] [--stats-png reports/figures/data_stats.png]

data.dataset:
  shapes    generates the embedded synthetic set (tood/data/shapes.py) into data.root, which must be a new or
            empty folder or one the generator made (it refuses any other, naming it);
  coco2017  downloads, verifies and extracts the official archives into data.root (tood/data/download.py);
  coco      your own COCO-format folder at data.root (data.train_images, data.train_ann, data.val_images,
            data.val_ann): validated and hashed, never written to (tood/data/coco_folder.py).
Either way DVC tracks only the small manifest, never the image tree (a 120k-file dep makes every `dvc repro`
status check take seconds per stage).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import HEADLINE, ConfigError, RunConfig, load_params, resolve_data_root, resolve_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file (data and shapes sections)")
    parser.add_argument(
        "--manifest", default="data/manifest.json", help="manifest JSON to write (the DVC out)"
    )
    parser.add_argument("--stats-md", default="reports/data_stats.md", help="statistics report (markdown)")
    parser.add_argument("--stats-png", default="reports/figures/data_stats.png", help="statistics figure")
    parser.add_argument("--archives-dir", default=None, help="coco2017: folder with pre-downloaded zips")
    args = parser.parse_args(argv)

    cfg = resolve_run_config(load_params(args.params), HEADLINE, where=args.params)
    root = resolve_data_root(cfg.data.root)
    manifest = Path(args.manifest)
    manifest.unlink(missing_ok=True)  # never leave a manifest that describes older files
    manifest.parent.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": (cfg.data.train_images, cfg.data.train_ann),
        "val": (cfg.data.val_images, cfg.data.val_ann),
    }
    checks = None
    if cfg.data.dataset == "shapes":
        _generate_shapes(cfg, root, manifest, where=args.params)
    elif cfg.data.dataset == "coco2017":
        from tood.data.download import prepare_coco2017

        prepare_coco2017(root, manifest_path=manifest, archives_dir=args.archives_dir)
    else:
        checks = _check_own_coco(cfg, root, splits, manifest, where=args.params)
    _write_report(cfg.data.dataset, root, splits, checks, args.stats_md, args.stats_png)
    print(f"{cfg.data.dataset} ready under {root}; manifest {manifest}")
    return 0


def _generate_shapes(cfg: RunConfig, root: Path, manifest: Path, where: str) -> None:
    from tood.data.shapes import ForeignFolderError, generate, write_manifest

    try:
        generate(cfg.shapes, root)
    except ForeignFolderError as e:
        raise ConfigError(f"{where}: data.root: {cfg.data.root!r}: {e}") from None
    shutil.copyfile(write_manifest(cfg.shapes, root), manifest)


def _check_own_coco(cfg: RunConfig, root: Path, splits: dict, manifest: Path, where: str) -> dict[str, dict]:
    """Validate and hash the user's folder; write the manifest outside it. Returns {split: check_split}."""
    from tood.data.coco_folder import check_split, folder_manifest

    if not root.is_dir():
        raise ConfigError(
            f"{where}: data.root: {cfg.data.root!r} ({root}) is not a folder (data.dataset: coco)"
        )
    if root.resolve() in manifest.resolve().parents:
        raise ConfigError(
            f"{where}: data.root: {cfg.data.root!r} holds the stage's manifest {manifest}, which would "
            "overwrite a file of yours; keep your dataset in a folder of its own, e.g. data/mine"
        )
    checks = {split: check_split(root / images, root / ann) for split, (images, ann) in splits.items()}
    manifest.write_text(json.dumps(folder_manifest(splits, checks), indent=1, sort_keys=True) + "\n")
    for split, c in checks.items():
        left_out = (
            f"; {len(c['left_out'])} boxes with zero or negative width/height left out"
            if c["left_out"]
            else ""
        )
        print(f"{split}: {c['num_images']} images, {c['num_annotations']} annotations{left_out}")
    return checks


def _write_report(dataset: str, root: Path, splits: dict, checks, md: str, png: str) -> None:
    """reports/data_stats.md + figure for any dataset; the user's folder gets its own validation section."""
    from tood.data.coco_folder import stats_ready, validation_markdown
    from tood.data.dataset import load_coco
    from tood.data.shapes import dataset_stats, write_stats

    stats = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, (_, ann) in splits.items():
            path = root / ann
            if dataset == "coco":  # yours may lack `area` or hold degenerate boxes: a cleaned copy
                path = Path(tmp) / f"{split}.json"
                path.write_text(json.dumps(stats_ready(load_coco(root / ann))))
            stats[split] = dataset_stats(path)
    write_stats(stats, md, png)
    title = f"# `{dataset}` dataset statistics"
    text = Path(md).read_text().replace("# `shapes` dataset statistics", title, 1)
    if checks is not None:
        text += "\n" + validation_markdown(root, checks)
    Path(md).write_text(text)
    for split, s in stats.items():
        print(f"{split}: {json.dumps(s.get('fpn_levels'))}")


if __name__ == "__main__":
    run(main)
