"""Stage `download_coco`: fetch, verify (MD5) and extract COCO 2017 under --root, then write --manifest.

DVC tracks only the small manifest, never the 118k-file tree: hashing it would add seconds per stage that
depends on it to every `dvc status` and no-op `dvc repro`, and caching it would store 20 GB twice. Re-running
is cheap: finished archives are skipped without any network access. Offline machines: download the zips
elsewhere and pass `--archives-dir DIR`.
"""

import argparse
import logging
import sys

from pipeline.cli import prog, run
from tood.data.download import COCO_BASE_URL, DownloadError, UnsafeArchiveError, prepare_coco2017


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog(__spec__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data/coco", help="where train2017/, val2017/, annotations/ go")
    parser.add_argument("--manifest", default="data/coco.manifest.json", help="manifest JSON (the DVC out)")
    parser.add_argument("--base-url", default=COCO_BASE_URL, help="mirror of images.cocodataset.org")
    parser.add_argument(
        "--archives-dir",
        default=None,
        help="folder with pre-downloaded zips; downloads go here too (<root>/zips)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=("train", "val", "annotations"), help="subset (a split adds annotations)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = prepare_coco2017(
            args.root,
            manifest_path=args.manifest,
            base_url=args.base_url,
            archives_dir=args.archives_dir,
            only=args.only,
            timeout=args.timeout,
        )
    except (DownloadError, UnsafeArchiveError) as exc:
        print(f"download_coco: {exc}", file=sys.stderr)
        return 1
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['num_images']} images in {args.root}/{info['image_dir']}")
    print(f"manifest: {args.manifest}")
    return 0


if __name__ == "__main__":
    run(main)
