"""Run a trained checkpoint on a folder of images: boxed images + a COCO-results JSON.

    python -m pipeline.predict --checkpoint runs/tood/seed0/last.pt --images my_images --out predictions

Writes <out>/<file name> (each image with its labelled boxes) and <out>/detections.json: COCO results
[{image_id, file_name, category_id, category_name, bbox [x, y, w, h], score}] where image_id is the
image's index in sorted file-name order among the readable images. Images go through the same
resize/normalise code as training (a temporary COCO file describing the folder is handed to
tood.data.dataset.CocoDetection).

The input folder is never written to: --out may not be it, lie inside it, or resolve to it through a
symlink, and each output file replaces its path instead of writing through a link. An image that cannot
be read is reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.cli import CliError, prog, run
from tood.config import RunConfig

EXTENSIONS = (".jpg", ".jpeg", ".png")
COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))
_CHECKPOINT_KEYS = ("config", "model", "cat_ids", "class_names")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a training checkpoint, e.g. runs/tood/seed0/last.pt"
    )
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder of .jpg/.jpeg/.png images (read only, not recursive)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for the boxed images and detections.json (not --images)",
    )
    parser.add_argument("--score-thr", type=float, default=0.3, help="keep detections scoring at least this")
    args = parser.parse_args(argv)
    check_paths(args.checkpoint, args.images, args.out)
    from tood.engine.inference import (
        load_detector,  # torch: after parsing, so --help and path errors are fast
    )
    from tood.engine.runtime import pick_device

    ckpt = load_checkpoint(args.checkpoint)
    detector, cfg = load_detector(ckpt, pick_device(), where=str(args.checkpoint))
    files, skipped = readable_images(args.images)
    for name, reason in skipped:
        print(f"predict: skipped {args.images / name}: {reason}", file=sys.stderr)
    if not files:
        raise CliError(
            f"--images {args.images}: no readable {'/'.join(EXTENSIONS)} images ({len(skipped)} unreadable)"
        )
    names = list(ckpt["class_names"])
    results = predict(detector, cfg, args.images, files, ckpt["cat_ids"], names, score_thr=args.score_thr)
    args.out.mkdir(parents=True, exist_ok=True)
    _replace(args.out / "detections.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"))
    for image_id, name in enumerate(files):
        draw_detections(
            args.images / name, [r for r in results if r["image_id"] == image_id], args.out / name
        )
    note = f" ({len(skipped)} unreadable images skipped)" if skipped else ""
    print(f"{len(results)} detections on {len(files)} images -> {args.out}{note}")
    return 0


def check_paths(checkpoint: Path, images: Path, out: Path) -> None:
    """CliError unless the checkpoint is a file, images a folder, and out a folder (or new) that is neither
    images nor inside it.

    Paths are compared after resolving symlinks, so a link to the input folder (or to a folder inside it)
    is refused as well.
    """
    if not checkpoint.is_file():
        raise CliError(f"--checkpoint {checkpoint}: no such file")
    if not images.is_dir():
        raise CliError(f"--images {images}: not a folder")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    src, dst = images.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        where = "is the --images folder" if dst == src else "lies inside the --images folder"
        raise CliError(f"--out {out} {where} {images} ({src}); predict never writes among its inputs")


def load_checkpoint(path: Path) -> dict:
    """torch.load(weights_only) of a training checkpoint; CliError (one line) if it is not one."""
    from tood.model.torch_file import UnreadableCheckpoint, read_torch_file

    try:
        ckpt = read_torch_file(path)
    except UnreadableCheckpoint as e:
        # never PyTorch's advice to load unsafely: this project's checkpoints load weights-only
        reason = "not a training checkpoint of this project; it " if e.needs_pickle else ""
        raise CliError(f"--checkpoint {path}: {reason}{e}") from None
    except OSError as e:
        raise CliError(f"--checkpoint {path}: cannot be read ({e.strerror})") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CliError(f"--checkpoint {path}: not a training checkpoint of this project (no {missing})")
    return ckpt


def readable_images(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted names of the images that decode, [(name, why not) for those that do not])."""
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in EXTENSIONS or not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                im.load()  # a full decode: a truncated file opens fine and fails only here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            skipped.append((path.name, str(e) or type(e).__name__))
            continue
        files.append(path.name)
    return files, skipped


def predict(
    detector, cfg: RunConfig, image_dir: Path, files: list[str], cat_ids, names, *, score_thr: float
) -> list[dict]:
    """COCO results of `files` (image_id = index in `files`) with file_name and category_name added.

    Post-processing is the evaluation one (cfg.eval) with its score threshold replaced by `score_thr`.
    """
    from tood.data.dataset import CocoDetection, build_loader
    from tood.engine.inference import run_inference, uses_centerness

    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "images.json"
        ann_file.write_text(json.dumps(folder_as_coco(image_dir, files, cat_ids, names)))
        d = cfg.data
        dataset = CocoDetection(
            image_dir, ann_file, img_scale=d.img_scale, size_divisor=d.size_divisor, flip_prob=0.0,
            mean=d.mean, std=d.std, train=False,
        )  # fmt: skip
        loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, seed=0, drop_last=False)
        use_ctr = uses_centerness(cfg.assign, cfg.loss, cfg.train.epochs)
        eval_cfg = dataclasses.replace(cfg.eval, score_thr=score_thr)
        results, _ = run_inference(detector, loader, eval_cfg, use_ctr, list(cat_ids), progress=False)
    by_cat = dict(zip(cat_ids, names))
    return [
        {**r, "file_name": files[r["image_id"]], "category_name": by_cat[r["category_id"]]} for r in results
    ]


def folder_as_coco(image_dir: Path, files: list[str], cat_ids, names) -> dict:
    """A COCO instances dict with one image record per file (sizes as stored: no EXIF rotation)."""
    images = []
    for image_id, name in enumerate(files):
        with Image.open(image_dir / name) as im:
            width, height = im.size
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    categories = [{"id": int(c), "name": n} for c, n in zip(cat_ids, names)]
    return {"images": images, "annotations": [], "categories": categories}


def draw_detections(src: Path, results: list[dict], dst: Path) -> None:
    """Draw each detection's box and "name score" label onto a copy of the image."""
    with Image.open(src) as im:
        canvas = im.convert("RGB")
    file_format = "JPEG" if src.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    draw = ImageDraw.Draw(canvas)
    for r in sorted(results, key=lambda r: r["score"]):  # best drawn last, on top
        x, y, w, h = r["bbox"]
        colour = COLOURS[r["category_id"] % len(COLOURS)]
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=2)
        label = f"{r['category_name']} {r['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), label)
        ty = max(y - (bottom - top) - 2, 0)
        draw.rectangle((x, ty, x + right - left + 2, ty + bottom - top + 2), fill=colour)
        draw.text((x + 1, ty), label, fill=(0, 0, 0))
    _replace(dst, lambda tmp: canvas.save(tmp, format=file_format))


def _replace(dst: Path, write) -> None:
    """write(tmp) next to dst, then rename over dst: a symlink or hard link at dst is replaced, never written
    through (it could point at an input image)."""
    tmp = dst.with_name(f".{dst.name}.part")
    write(tmp)
    os.replace(tmp, dst)


if __name__ == "__main__":
    run(main)
