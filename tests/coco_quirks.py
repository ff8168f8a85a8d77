"""A small COCO-format folder with the quirks real exports have, written to disk for the data tests.

Quirks: non-contiguous category ids listed out of order, greyscale JPEG and PNG images, an image without
annotations, a crowd region (uncompressed RLE), a box without `area`, boxes of zero, sub-pixel and negative
width or height, and file and folder names with spaces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}]
TRAIN_IMAGES, VAL_IMAGES = "my images/train", "my images/val"
TRAIN_ANN, VAL_ANN = "labels/train set.json", "labels/val set.json"
# annotation ids that must be left out of training and evaluation: (id, image id, problem)
LEFT_OUT = {
    "train": [(13, 2, "zero width/height"), (14, 2, "negative width/height")],
    "val": [(24, 11, "negative width/height"), (25, 12, "zero width/height")],
}


def _image(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 255, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def _ann(ann_id: int, image_id: int, cat: int, bbox: list, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def _train(root: Path) -> dict:
    images = [
        {"id": 1, "file_name": "street scene 01.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "grey cat.jpg", "width": 48, "height": 64},
        {"id": 5, "file_name": "empty room.png", "width": 40, "height": 40},  # no annotations
    ]
    for rec, mode in zip(images, ("RGB", "L", "RGB")):
        _image(root / TRAIN_IMAGES / rec["file_name"], (rec["width"], rec["height"]), mode, rec["id"])
    crowd = {"counts": [0, 200, 64 * 48 - 200], "size": [48, 64]}
    anns = [
        _ann(10, 1, 3, [4.0, 4.0, 20.0, 16.0], area=320.0, iscrowd=0),
        _ann(11, 1, 90, [30.0, 10.0, 12.0, 30.0]),  # no area, no iscrowd
        _ann(12, 1, 3, [0.0, 0.0, 10.0, 20.0], area=200.0, iscrowd=1, segmentation=crowd),
        _ann(13, 2, 17, [10.0, 10.0, 0.0, 12.0], area=0.0, iscrowd=0),  # zero width
        _ann(14, 2, 17, [30.0, 20.0, -8.0, 10.0], area=80.0, iscrowd=0),  # negative width
        _ann(15, 2, 17, [5.0, 30.0, 20.0, 25.0], area=500.0, iscrowd=0),
        _ann(16, 2, 3, [1.0, 1.0, 0.5, 6.0], area=3.0, iscrowd=0),  # sub-pixel: not a training target
    ]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def _val(root: Path) -> dict:
    images = [
        {"id": 11, "file_name": "val one.png", "width": 56, "height": 40},
        {"id": 12, "file_name": "val grey.png", "width": 40, "height": 56},
        {"id": 13, "file_name": "val empty.jpg", "width": 32, "height": 32},  # no annotations
    ]
    for rec, mode in zip(images, ("RGB", "L", "RGB")):
        _image(root / VAL_IMAGES / rec["file_name"], (rec["width"], rec["height"]), mode, rec["id"])
    crowd = {"counts": [0, 100, 40 * 56 - 100], "size": [56, 40]}
    anns = [
        _ann(21, 11, 3, [2.0, 2.0, 20.0, 20.0], area=400.0, iscrowd=0),
        _ann(22, 11, 90, [30.0, 5.0, 20.0, 30.0], area=600.0, iscrowd=0),
        _ann(23, 12, 17, [4.0, 10.0, 30.0, 40.0], area=1200.0, iscrowd=0),
        _ann(24, 11, 17, [40.0, 30.0, 10.0, -6.0], area=60.0, iscrowd=0),  # negative height, positive area
        _ann(25, 12, 3, [5.0, 5.0, 12.0, 0.0], area=0.0, iscrowd=0),  # zero height
        _ann(26, 12, 3, [0.0, 0.0, 8.0, 8.0], area=64.0, iscrowd=1, segmentation=crowd),
    ]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def make_quirky_coco(root: Path) -> Path:
    """Write the folder under root (created); returns root."""
    for ann_file, data in ((TRAIN_ANN, _train(root)), (VAL_ANN, _val(root))):
        (root / ann_file).parent.mkdir(parents=True, exist_ok=True)
        (root / ann_file).write_text(json.dumps(data))
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: relative path -> (bytes, mtime_ns); equal snapshots mean nothing changed."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
