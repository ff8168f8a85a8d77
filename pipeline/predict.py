"""Run a trained checkpoint on a folder of images: boxed images + a COCO-results JSON.

    python -m pipeline.predict --checkpoint runs/tood/seed0/last.pt --images my_images --out predictions

Writes <out>/<file name> (each image with its labelled boxes) and <out>/detections.json: COCO results
[{image_id, file_name, category_id, category_name, bbox [x, y, w, h], score}] where image_id is the
image's index in sorted file-name order. Images go through the same resize/normalise code as training
(a temporary COCO file describing the folder is handed to tood.data.CocoDetection).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from tood.config import RunConfig
from tood.data import CocoDetection, build_loader
from tood.inference import load_detector, run_inference, uses_centerness
from tood.train import pick_device

EXTENSIONS = (".jpg", ".jpeg", ".png")
COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of .jpg/.jpeg/.png images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--score-thr", type=float, default=0.3, help="keep detections scoring at least this")
    args = parser.parse_args(argv)

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    detector, cfg = load_detector(ckpt, pick_device(), where=str(args.checkpoint))
    names = list(ckpt["class_names"])
    files = sorted(p.name for p in args.images.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no {'/'.join(EXTENSIONS)} images in {args.images}")
    results = predict(detector, cfg, args.images, files, ckpt["cat_ids"], names, score_thr=args.score_thr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detections.json").write_text(json.dumps(results, indent=1) + "\n")
    for image_id, name in enumerate(files):
        draw_detections(
            args.images / name, [r for r in results if r["image_id"] == image_id], args.out / name
        )
    print(f"{len(results)} detections on {len(files)} images -> {args.out}")
    return 0


def predict(
    detector, cfg: RunConfig, image_dir: Path, files: list[str], cat_ids, names, *, score_thr: float
) -> list[dict]:
    """COCO results of `files` (image_id = index in `files`) with file_name and category_name added.

    Post-processing is the evaluation one (cfg.eval) with its score threshold replaced by `score_thr`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "images.json"
        ann_file.write_text(json.dumps(folder_as_coco(image_dir, files, cat_ids, names)))
        d = cfg.data
        dataset = CocoDetection(
            image_dir, ann_file, img_scale=d.img_scale, size_divisor=d.size_divisor, flip_prob=0.0,
            mean=d.mean, std=d.std, train=False,
        )  # fmt: skip
        loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, seed=0, drop_last=False)
        use_ctr = uses_centerness(cfg.assign, cfg.train.epochs)
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
    canvas.save(dst)


if __name__ == "__main__":
    raise SystemExit(main())
