"""`shapes`: the embedded synthetic detection dataset, written in real COCO format.

It is built to be hard in the ways COCO is hard for TOOD (docs/data.md, "The embedded dataset"), so that the prior that
classifies an object best and the prior that localises it best can differ:
- the class is decided by shape alone; colours and textured fills come from one shared palette;
- 1..max_objects objects per image (skewed towards few), a share of them placed next to an earlier
  object: crowds, heavy overlap, occlusion (later objects are painted over earlier ones);
- sizes from shapes.min_side_px to shapes.max_side_fraction * image_size (log-uniform by default), aspect
  ratios 1/3..3 where the shape allows it;
- shapes whose mass is off the box centre (ring, L, T, triangle, crescent, arrow);
- textured backgrounds (gradient, stripes, low-frequency noise, checker), clutter strokes drawn
  under and over the objects, pixel noise, JPEG.
Boxes are those of the VISIBLE pixels after all painting, as COCO's are; an object with less than
shapes.min_visible_fraction of its pixels visible is dropped. Segmentations are compressed RLE of the visible
mask (pycocotools reads RLE for iscrowd=0 as well) and `area` is the visible pixel count, as in COCO.
Each annotation also carries a non-standard `visible_fraction` used by the statistics report.

Every image is drawn from its own numpy Generator(PCG64) seeded by (seed, split, index), with PIL only,
so one image never depends on another and the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from tood.config import ShapesConfig
from tood.model.boxes import pairwise_iou
from tood.progress import progress

SPLITS = ("train", "val")
MIN_VISIBLE_PIXELS = 4
NEAR_PREVIOUS_PROB = 0.4  # chance an object is centred next to an earlier one (crowds)
STRIDES = (8, 16, 32, 64, 128)  # P3-P7
OCTAVE_SCALE = 8  # the TOOD prior of a level is an 8*stride square [R]
# COCO's category ids have gaps (80 classes in 1..90); ours do too, so loaders must map ids -> labels.
CATEGORY_IDS = (1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17)
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (250, 190, 212), (0, 128, 128), (170, 110, 40), (20, 20, 20),
    (255, 255, 255), (128, 128, 0),
)  # fmt: skip


def _ellipse(rx: float, ry: float, dx: float = 0.0, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack((dx + rx * np.cos(t), ry * np.sin(t)), axis=1)  # (n, 2)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


# Outlines in a unit box [-0.5, 0.5]^2: a list of (polygon (K, 2), fill) parts, fill 0 cuts a hole.
def _rectangle(rng: np.random.Generator) -> list:
    return [(_rect(-0.5, -0.5, 0.5, 0.5), 255)]


def _triangle(rng: np.random.Generator) -> list:
    apex = rng.uniform(-0.5, 0.5)  # from isosceles to right-angled: the centroid moves off the box centre
    return [(np.array([[-0.5, 0.5], [0.5, 0.5], [apex, -0.5]]), 255)]


def _ring(rng: np.random.Generator) -> list:
    inner = 0.5 * rng.uniform(0.45, 0.75)
    return [(_ellipse(0.5, 0.5), 255), (_ellipse(inner, inner), 0)]


def _cross(rng: np.random.Generator) -> list:
    t, dy = rng.uniform(0.1, 0.2), rng.uniform(-0.25, 0.25)  # bar half-thickness, off-centre cross bar
    return [(_rect(-0.5, dy - t, 0.5, dy + t), 255), (_rect(-t, -0.5, t, 0.5), 255)]


def _l_shape(rng: np.random.Generator) -> list:
    t = rng.uniform(0.25, 0.45)
    return [(_rect(-0.5, -0.5, t - 0.5, 0.5), 255), (_rect(-0.5, 0.5 - t, 0.5, 0.5), 255)]


def _ellipse_shape(rng: np.random.Generator) -> list:
    return [(_ellipse(0.5, 0.5), 255)]


def _star(rng: np.random.Generator) -> list:
    r = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * rng.uniform(0.35, 0.5))
    t = np.arange(10) * np.pi / 5 - np.pi / 2
    return [(np.stack((r * np.cos(t), r * np.sin(t)), axis=1), 255)]


def _diamond(rng: np.random.Generator) -> list:
    return [(np.array([[0, -0.5], [0.5, 0], [0, 0.5], [-0.5, 0]]), 255)]


def _hexagon(rng: np.random.Generator) -> list:
    return [(_ellipse(0.5, 0.5, n=6), 255)]


def _t_shape(rng: np.random.Generator) -> list:
    t = rng.uniform(0.25, 0.4)
    return [(_rect(-0.5, -0.5, 0.5, t - 0.5), 255), (_rect(-t / 2, -0.5, t / 2, 0.5), 255)]


def _crescent(rng: np.random.Generator) -> list:
    return [(_ellipse(0.5, 0.5), 255), (_ellipse(0.45, 0.45, rng.uniform(0.2, 0.35)), 0)]


def _arrow(rng: np.random.Generator) -> list:
    t, head = rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.5)
    x = 0.5 - head
    return [(np.array([[-0.5, -t], [x, -t], [x, -0.5], [0.5, 0], [x, 0.5], [x, t], [-0.5, t]]), 255)]


@dataclass(frozen=True)
class ShapeKind:
    """One class: a name, an outline drawer and how it may be stretched and turned."""

    name: str
    outline: Callable[[np.random.Generator], list]
    max_aspect: float  # w/h drawn log-uniform in [1/max_aspect, max_aspect]
    axis_aligned: bool  # rotation k*90 deg +- 15 deg (keeps rectangle != diamond) instead of any angle


# Class k (0-based label) is KINDS[k]; a config with num_classes=C uses the first C.
KINDS = (
    ShapeKind("rectangle", _rectangle, 3.0, True),
    ShapeKind("triangle", _triangle, 3.0, False),
    ShapeKind("ring", _ring, 2.0, False),
    ShapeKind("cross", _cross, 3.0, True),
    ShapeKind("l_shape", _l_shape, 3.0, True),
    ShapeKind("ellipse", _ellipse_shape, 3.0, False),
    ShapeKind("star", _star, 1.3, False),
    ShapeKind("diamond", _diamond, 2.0, True),
    ShapeKind("hexagon", _hexagon, 1.3, False),
    ShapeKind("t_shape", _t_shape, 3.0, True),
    ShapeKind("crescent", _crescent, 1.5, False),
    ShapeKind("arrow", _arrow, 3.0, False),
)


# ---------------------------------------------------------------------------------------------------
# drawing one image


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed % 2**63, SPLITS.index(split), index]))
    )


def _colour(rng: np.random.Generator, muted: bool = False) -> np.ndarray:
    c = np.array(PALETTE[rng.integers(len(PALETTE))], dtype=np.float32) + rng.normal(0, 12, 3)
    return 0.5 * c + 64.0 if muted else c  # (3,) backgrounds are pulled towards grey


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float32: gradient, stripes, low-frequency noise or checker between two muted colours."""
    c1, c2 = _colour(rng, muted=True), _colour(rng, muted=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (S, S) each
    a, kind = rng.uniform(0, 2 * np.pi), rng.integers(4)
    along = xx * np.cos(a) + yy * np.sin(a)
    if kind == 0:
        t = (along - along.min()) / (np.ptp(along) + 1e-6)
    elif kind == 1:
        t = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(3, 24))
    elif kind == 2:
        k = int(rng.integers(3, 12))
        small = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
        t = np.asarray(small.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    else:
        cell = int(rng.integers(4, 24))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    return c1 + t[..., None] * (c2 - c1)  # (S, S, 3)


def _fill(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(n, 3) colours of the n pixels (ys, xs): solid, two-colour stripes, noisy or a gradient."""
    base, other = _colour(rng), _colour(rng)
    kind = rng.choice(4, p=(0.5, 0.2, 0.2, 0.1))
    a = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(a) + ys * np.sin(a)  # (n,)
    if kind == 0 or len(ys) == 0:
        return np.broadcast_to(base, (len(ys), 3))
    if kind == 1:
        return np.where((along // rng.uniform(1.5, 6) % 2 == 0)[:, None], base, other)
    if kind == 2:
        return base + rng.normal(0, 25, (len(ys), 3))
    t = (along - along.min()) / (np.ptp(along) + 1e-6)
    return base + t[:, None] * (other - base)


def _rasterise(parts: list, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in parts:
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)
    return np.asarray(img) > 0  # (S, S)


def _clutter_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) bool: a stroke, scribble, arc or small irregular blob that is not an object."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    kind, width = rng.integers(4), int(rng.integers(1, 4))
    if kind == 0:
        draw.line([tuple(p) for p in (rng.uniform(-0.1, 1.1, (2, 2)) * size).tolist()], fill=255, width=width)
    elif kind == 1:
        walk = rng.uniform(0, size, 2) + np.cumsum(
            rng.normal(0, 0.12 * size, (int(rng.integers(3, 8)), 2)), 0
        )
        draw.line([tuple(p) for p in walk.tolist()], fill=255, width=width, joint="curve")
    elif kind == 2:
        x0, y0 = rng.uniform(-0.2, 0.8, 2) * size
        r = rng.uniform(0.1, 0.5) * size
        start = float(rng.uniform(0, 360))  # at most 3/4 of a circle: a full one would look like a ring
        draw.arc([x0, y0, x0 + r, y0 + r], start, start + float(rng.uniform(45, 270)), 255, width)
    else:
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        r = rng.uniform(2, 0.08 * size) * rng.uniform(0.5, 1.0, 12)
        pts = rng.uniform(0, size, 2) + np.stack((r * np.cos(t), r * np.sin(t)), 1)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(img) > 0


def draw_side(rng: np.random.Generator, cfg: ShapesConfig) -> float:
    """An object's side sqrt(w*h) in pixels, before rotation: cfg.size_distribution on [floor, max]."""
    lo, hi = cfg.min_side_px, cfg.max_side_fraction * cfg.image_size
    if cfg.size_distribution == "log_uniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(lo, hi)


def _place_object(
    rng: np.random.Generator, kind: ShapeKind, side: float, size: int, centres: list, centre=None
) -> list:
    """The kind's outline parts in pixels: aspect, rotation and, unless `centre` is given, a centre (next to
    an earlier one in `centres` for a crowd, else anywhere) for an object of the given side."""
    aspect = math.exp(rng.uniform(-math.log(kind.max_aspect), math.log(kind.max_aspect)))
    wh = np.minimum([side * math.sqrt(aspect), side / math.sqrt(aspect)], 0.95 * size)
    if kind.axis_aligned:
        theta = rng.integers(4) * np.pi / 2 + rng.uniform(-np.pi / 12, np.pi / 12)
    else:
        theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    parts = [((pts * wh) @ rot.T, fill) for pts, fill in kind.outline(rng)]
    half = np.max(np.abs(np.concatenate([p for p, _ in parts])), axis=0)  # (2,) half extents
    if centre is not None:
        centre = np.asarray(centre, dtype=float)
    elif centres and rng.random() < NEAR_PREVIOUS_PROB:
        near = centres[rng.integers(len(centres))]
        centre = near + rng.normal(0, 0.5, 2) * np.maximum(half, 4)
    else:
        centre = rng.uniform(0, 1, 2) * size
    centre = np.clip(centre, 0.4 * half, size - 0.4 * half)  # at most ~30% of the extent leaves the image
    centres.append(centre)
    return [(pts + centre, fill) for pts, fill in parts]


def render_image(cfg: ShapesConfig, split: str, index: int) -> tuple[np.ndarray, list[dict], int]:
    """Draw image `index` of `split`.

    Returns:
        image (S, S, 3) uint8, its visible objects [{label, mask (S, S) bool, visible_fraction}] in paint
        order, and the number of objects dropped for being occluded by more than 70%.
    """
    rng, size = _image_rng(cfg.seed, split, index), cfg.image_size
    canvas = _background(rng, size)  # (S, S, 3)
    for _ in range(rng.poisson(2.5)):
        mask = _clutter_mask(rng, size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the object that shows at each pixel
    num = min(cfg.max_objects, 1 + int(cfg.max_objects * rng.random() ** 1.6))
    labels, full_area, centres = rng.integers(cfg.num_classes, size=num), [], []
    for i, label in enumerate(labels):
        mask = _rasterise(_place_object(rng, KINDS[label], draw_side(rng, cfg), size, centres), size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
        owner[mask] = i
        full_area.append(int(mask.sum()))
    for _ in range(rng.poisson(1.0)):  # clutter over the objects occludes them too
        mask = _clutter_mask(rng, size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
        owner[mask] = -1
    canvas += rng.normal(0, rng.uniform(2, 8), canvas.shape)
    objects = []
    for i, label in enumerate(labels):
        visible = owner == i
        count = int(visible.sum())
        if full_area[i] and count >= MIN_VISIBLE_PIXELS and count >= cfg.min_visible_fraction * full_area[i]:
            objects.append({"label": int(label), "mask": visible, "visible_fraction": count / full_area[i]})
    dropped = sum(1 for a in full_area if a) - len(objects)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects, dropped


# ---------------------------------------------------------------------------------------------------
# classification crops: the pretraining task (our offline stand-in for ImageNet)

CROP_STREAM = 7  # SeedSequence entry that keeps crops apart from the detection splits' (0, 1) streams


def render_crop(seed: int, index: int, size: int, num_kinds: int) -> tuple[np.ndarray, int]:
    """Crop `index`: one shape of a random kind (the label) near the centre, on the detection set's
    backgrounds, fills and clutter, with distractor shapes around it and sometimes over it.

    The stream (seed, CROP_STREAM, index) never coincides with a detection image's (seed, split, index), and
    the pretraining stage also uses its own seed, so no detection image is ever drawn here.
    Returns an (S, S, 3) uint8 image and the label in [0, num_kinds).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % 2**63, CROP_STREAM, index])))
    canvas = _background(rng, size)  # (S, S, 3)
    for _ in range(rng.poisson(1.5)):
        mask = _clutter_mask(rng, size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
    for _ in range(rng.integers(3)):  # smaller distractors under the object, anywhere (often cut by the edge)
        side = math.exp(rng.uniform(math.log(0.1 * size), math.log(0.35 * size)))
        mask = _rasterise(_place_object(rng, KINDS[rng.integers(num_kinds)], side, size, []), size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
    label = int(rng.integers(num_kinds))
    side = math.exp(rng.uniform(math.log(0.4 * size), math.log(0.85 * size)))  # the largest shape
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    mask = _rasterise(_place_object(rng, KINDS[label], side, size, [], centre=centre), size)
    canvas[mask] = _fill(rng, *np.nonzero(mask))
    if rng.random() < 0.3:  # a small occluder over the object
        side = math.exp(rng.uniform(math.log(0.1 * size), math.log(0.25 * size)))
        mask = _rasterise(_place_object(rng, KINDS[rng.integers(num_kinds)], side, size, []), size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
    for _ in range(rng.poisson(0.5)):
        mask = _clutter_mask(rng, size)
        canvas[mask] = _fill(rng, *np.nonzero(mask))
    canvas += rng.normal(0, rng.uniform(2, 8), canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------------------------------------------
# COCO files


def _annotation(obj: dict, ann_id: int, image_id: int, cat_ids: tuple[int, ...]) -> dict:
    mask = obj["mask"]
    xs, ys = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    x0, y0, x1, y1 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1  # pixel edges
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_ids[obj["label"]],
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "visible_fraction": round(obj["visible_fraction"], 4),
    }


def _write_split(cfg: ShapesConfig, split: str, out_root: Path) -> dict:
    """Draw and write every image of one split; returns its COCO dict (without info/licenses)."""
    (out_root / split).mkdir(parents=True)
    count = cfg.num_train if split == "train" else cfg.num_val
    images, annotations, dropped = [], [], 0
    for index in progress(range(count), desc=f"shapes: draw {split} images", unit="image"):
        image, objects, num_dropped = render_image(cfg, split, index)
        image_id = SPLITS.index(split) * 1_000_000 + index + 1  # unique over both splits, like COCO's
        file_name = f"{image_id:012d}.jpg"
        # fixed quality, 4:4:4 chroma (keeps 4 px objects' colours), no optimize/progressive passes
        Image.fromarray(image).save(
            out_root / split / file_name, "JPEG", quality=cfg.jpeg_quality, subsampling=0, optimize=False
        )
        images.append(
            {"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size}
        )
        for obj in objects:
            annotations.append(_annotation(obj, len(annotations) + 1, image_id, CATEGORY_IDS))
        dropped += num_dropped
    categories = [
        {"id": CATEGORY_IDS[k], "name": KINDS[k].name, "supercategory": "shape"}
        for k in range(cfg.num_classes)
    ]
    return {"images": images, "annotations": annotations, "categories": categories, "dropped": dropped}


LICENSES = [{"id": 1, "name": "CC0-1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def _info(cfg: ShapesConfig, split: str, dropped: int) -> dict:
    """COCO `info`, plus the generator config and the count of objects dropped as > 70% occluded."""
    return {
        "description": f"shapes: synthetic TOOD ablation dataset ({split})",
        "version": "1.0",
        "year": 2021,
        "contributor": "tood-repro",
        "url": "",
        "date_created": "",  # no timestamp: the file must be byte-identical for a given seed
        "generator": dataclasses.asdict(cfg),
        "num_dropped_occluded": dropped,
    }


def _dump_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


# A file in out_root saying the generator made the folder and may rewrite its train/, val/, annotations/.
MARKER = ".tood-shapes"
_MARKER_TEXT = (
    "This folder was made by the `shapes` generator (tood/data/shapes.py). Each `data` stage run deletes and\n"
    "rewrites train/, val/ and annotations/ here: keep no files of your own in them.\n"
)


class ForeignFolderError(FileExistsError):
    """out_root holds files the generator did not make; it refuses to write there."""


def claim_folder(out_root: Path) -> None:
    """Make sure out_root is the generator's own folder, creating and marking it if needed.

    A folder qualifies if it holds MARKER, does not exist yet, or is empty. A folder generated before the
    marker existed is recognised by its contents (only train/, val/, annotations/, manifest.json, and
    annotation files this generator wrote) and marked. Anything else, e.g. a user's own COCO folder that
    data.root points to, raises ForeignFolderError naming it: nothing in it is deleted or overwritten.
    """
    out_root = Path(out_root)
    if (out_root / MARKER).is_file():
        return
    if out_root.exists() and not (out_root.is_dir() and _empty_or_legacy(out_root)):
        raise ForeignFolderError(
            f"{out_root} already exists and was not made by the shapes generator (no {MARKER} marker), "
            "which writes nowhere else so that nothing of yours is overwritten: point data.root at a new "
            "folder, or set data.dataset: coco to use this one as your own dataset"
        )
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / MARKER).write_text(_MARKER_TEXT)


def _empty_or_legacy(out_root: Path) -> bool:
    names = {p.name for p in out_root.iterdir()}
    if not names:
        return True
    if not names <= {*SPLITS, "annotations", "manifest.json"}:
        return False
    for split in SPLITS:
        try:
            info = json.loads((out_root / "annotations" / f"instances_{split}.json").read_text())["info"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not (isinstance(info, dict) and info.get("contributor") == "tood-repro" and "generator" in info):
            return False
    return True


def generate(cfg: ShapesConfig, out_root: Path) -> dict:
    """Write out_root/{train,val}/*.jpg and out_root/annotations/instances_{train,val}.json.

    out_root must be the generator's own folder (see claim_folder: a new, empty or marked one; anything else
    raises ForeignFolderError). train/, val/ and annotations/ under it are deleted first, so the folder holds
    exactly one dataset. Returns {split: {image_dir, ann_file, num_images, num_annotations,
    num_dropped_occluded}}.
    """
    out_root = Path(out_root)
    claim_folder(out_root)
    for sub in (*SPLITS, "annotations"):
        shutil.rmtree(out_root / sub, ignore_errors=True)
    (out_root / "annotations").mkdir(parents=True)
    summary = {}
    for split in SPLITS:
        coco = _write_split(cfg, split, out_root)
        dropped = coco.pop("dropped")
        ann_file = out_root / "annotations" / f"instances_{split}.json"
        _dump_json({"info": _info(cfg, split, dropped), "licenses": LICENSES, **coco}, ann_file)
        summary[split] = {
            "image_dir": str(out_root / split),
            "ann_file": str(ann_file),
            "num_images": len(coco["images"]),
            "num_annotations": len(coco["annotations"]),
            "num_dropped_occluded": dropped,
        }
    return summary


def write_manifest(cfg: ShapesConfig, out_root: Path) -> Path:
    """out_root/manifest.json: config, image lists, sha256 of each annotation file and of each image set.

    Small and deterministic, so downstream DVC stages can depend on it instead of hashing the image tree.
    """
    out_root = Path(out_root)
    manifest: dict = {"config": dataclasses.asdict(cfg), "annotations": {}, "images": {}}
    for split in SPLITS:
        ann_file = out_root / "annotations" / f"instances_{split}.json"
        manifest["annotations"][split] = {
            "file": ann_file.relative_to(out_root).as_posix(),
            "sha256": hashlib.sha256(ann_file.read_bytes()).hexdigest(),
        }
        names = sorted(p.name for p in (out_root / split).glob("*.jpg"))
        digest = hashlib.sha256()
        for name in names:
            digest.update(
                name.encode() + b"\0" + hashlib.sha256((out_root / split / name).read_bytes()).digest()
            )
        manifest["images"][split] = {"dir": split, "files": names, "sha256": digest.hexdigest()}
    path = out_root / "manifest.json"
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# statistics report


def fpn_levels(wh: np.ndarray) -> np.ndarray:
    """Level index (0 = P3 .. 4 = P7) whose 8*stride square prior, centred on the box, has the best IoU.

    Args:
        wh: (N, 2) box widths and heights in pixels.
    """
    boxes = torch.as_tensor(np.asarray(wh, dtype=np.float64).reshape(-1, 2))
    boxes = torch.cat((-boxes / 2, boxes / 2), dim=1)  # (N, 4) xyxy centred on 0
    half = torch.tensor([OCTAVE_SCALE * s / 2 for s in STRIDES], dtype=torch.float64)
    priors = torch.stack((-half, -half, half, half), dim=1)  # (L, 4)
    return pairwise_iou(boxes, priors).argmax(dim=1).numpy()  # (N, L) -> (N,)


def _overlap_fraction(anns: list[dict], threshold: float = 0.3) -> float:
    """Share of annotations whose box has IoU > threshold with another box of the same image."""
    by_image: dict[int, list] = {}
    for a in anns:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    hits = 0
    for boxes in by_image.values():
        iou = pairwise_iou(*[torch.tensor(boxes, dtype=torch.float64)] * 2).fill_diagonal_(0)  # (n, n)
        hits += int((iou > threshold).any(dim=1).sum())
    return hits / max(len(anns), 1)


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def _objects_per_image(coco: dict) -> dict:
    per_image = {img["id"]: 0 for img in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]] += 1
    counts = np.array(list(per_image.values()), dtype=int)
    if len(counts) == 0:
        return {"min": 0, "mean": 0.0, "max": 0, "hist": []}
    hist = np.bincount(counts).tolist()  # hist[k] = images with k objects
    return {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max()), "hist": hist}


def _occlusion(coco: dict) -> dict:
    anns = coco["annotations"]
    visible = np.array([a["visible_fraction"] for a in anns if "visible_fraction" in a], dtype=float)
    return {
        "mean_visible_fraction": float(visible.mean()) if len(visible) else 1.0,
        "min_visible_fraction": float(visible.min()) if len(visible) else 1.0,
        "occluded_share": float((visible < 0.99).mean()) if len(visible) else 0.0,
        "overlapping_share": _overlap_fraction(anns),
        "dropped": coco.get("info", {}).get("num_dropped_occluded"),
    }


def dataset_stats(ann_file: str | Path) -> dict:
    """Counts of one COCO annotation file: classes, crowding, occlusion, box sizes per FPN level.

    Box side = sqrt(w * h); its histogram uses quarter-octave bins from 2 to 1024 px.
    """
    coco = json.loads(Path(ann_file).read_text())
    anns = coco["annotations"]
    wh = np.array([a["bbox"][2:] for a in anns], dtype=float).reshape(-1, 2)  # (N, 2)
    sides, area = np.sqrt(wh.prod(1)), np.array([a["area"] for a in anns], dtype=float)
    levels = np.bincount(fpn_levels(wh), minlength=len(STRIDES))
    edges = 2.0 ** np.arange(1, 10.25, 0.25)
    classes = sorted(coco["categories"], key=lambda c: c["id"])
    return {
        "num_images": len(coco["images"]),
        "num_annotations": len(anns),
        "classes": [
            {"id": c["id"], "name": c["name"], "count": sum(a["category_id"] == c["id"] for a in anns)}
            for c in classes
        ],
        "objects_per_image": _objects_per_image(coco),
        "box_side": _summary(sides),
        "aspect_ratio": _summary(wh[:, 0] / np.maximum(wh[:, 1], 1e-9)),
        "area_buckets": {  # COCO's APs / APm / APl thresholds
            "small": int((area < 32**2).sum()),
            "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
            "large": int((area >= 96**2).sum()),
        },
        "fpn_levels": {f"P{i + 3}": int(n) for i, n in enumerate(levels)},
        "side_hist": {"edges": edges.tolist(), "counts": np.histogram(sides, edges)[0].tolist()},
        "occlusion": _occlusion(coco),
    }


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header, ["---"] * len(header), *rows]
    return ["| " + " | ".join(str(c) for c in row) + " |" for row in cells] + [""]


def _summary_table(stats: dict[str, dict]) -> list[str]:
    header = ["split", "images", "objects", "objects/image min", "mean", "max"]
    header += ["box side min", "median", "max", "aspect w/h min", "max"]
    rows = []
    for split, st in stats.items():
        o, b, r = st["objects_per_image"], st["box_side"], st["aspect_ratio"]
        counts = [st["num_images"], st["num_annotations"], o["min"], f"{o['mean']:.2f}", o["max"]]
        sides = [f"{b[k]:.1f}" for k in ("min", "median", "max")]
        rows.append([split, *counts, *sides, f"{r['min']:.2f}", f"{r['max']:.2f}"])
    return _table(header, rows)


def _class_table(stats: dict[str, dict]) -> list[str]:
    splits = list(stats)
    classes = stats[splits[0]]["classes"]
    rows = [
        [c["id"], c["name"], *(stats[s]["classes"][k]["count"] for s in splits)]
        for k, c in enumerate(classes)
    ]
    return ["## Instances per class", "", *_table(["id", "class", *splits], rows)]


def _occlusion_table(stats: dict[str, dict]) -> list[str]:
    note = (
        "Visible fraction = visible / full pixels of an object; the generator drops objects less visible than "
        "`shapes.min_visible_fraction`. Overlapping = box IoU > 0.3 with another box of the same image."
    )
    header = ["split", "mean visible", "min visible", "occluded (< 99% visible)", "overlapping", "dropped"]
    rows = []
    for split, st in stats.items():
        o = st["occlusion"]
        visible = [f"{o['mean_visible_fraction']:.3f}", f"{o['min_visible_fraction']:.3f}"]
        shares = [f"{o['occluded_share']:.1%}", f"{o['overlapping_share']:.1%}"]
        rows.append([split, *visible, *shares, o["dropped"]])
    return ["## Occlusion and overlap", "", note, "", *_table(header, rows)]


def _level_table(stats: dict[str, dict]) -> list[str]:
    note = (
        "Level of a box = the level whose 8·stride square prior, centred on the box, has the best IoU with "
        "it. COCO area buckets (APs/APm/APl): small < 32², medium < 96², large."
    )
    levels = [f"P{i + 3} ({OCTAVE_SCALE * s}px)" for i, s in enumerate(STRIDES)]
    rows = [[split, *st["fpn_levels"].values(), *st["area_buckets"].values()] for split, st in stats.items()]
    return [
        "## Box sizes per FPN level",
        "",
        note,
        "",
        *_table(["split", *levels, "small", "medium", "large"], rows),
    ]


def _markdown(stats: dict[str, dict]) -> str:
    title = [
        "# `shapes` dataset statistics",
        "",
        "Written by `python -m pipeline.prepare_data` (the `data` stage; tood/data/shapes.py).",
        "",
    ]
    parts = (title, _summary_table(stats), _class_table(stats), _occlusion_table(stats), _level_table(stats))
    return "\n".join(line for part in parts for line in part)


def _figure(stats_by_split: dict[str, dict]) -> Figure:
    fig = Figure(figsize=(15, 4.2), layout="constrained")  # no pyplot: no global backend state
    ax_n, ax_side, ax_cls = fig.subplots(1, 3)
    width = 0.8 / len(stats_by_split)
    for k, (split, st) in enumerate(stats_by_split.items()):
        hist = st["objects_per_image"]["hist"]
        ax_n.bar(np.arange(len(hist)) + k * width, hist, width, label=split)
        ax_side.stairs(st["side_hist"]["counts"], st["side_hist"]["edges"], label=split)
        class_counts = [c["count"] for c in st["classes"]]
        ax_cls.bar(np.arange(len(class_counts)) + k * width, class_counts, width, label=split)
    # square-box boundary between P_l and P_l+1: the geometric mean of their prior sides
    for i in range(len(STRIDES) - 1):
        ax_side.axvline(OCTAVE_SCALE * math.sqrt(STRIDES[i] * STRIDES[i + 1]), color="grey", ls="--", lw=0.8)
        x = OCTAVE_SCALE * STRIDES[i] * 1.05
        ax_side.text(x, 0.98, f"P{i + 3}", transform=ax_side.get_xaxis_transform(), va="top", fontsize=8)
    names = [c["name"] for c in next(iter(stats_by_split.values()))["classes"]]
    ax_cls.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax_side.set_xscale("log")
    titles = (("objects per image", "objects"), ("box side sqrt(w*h)", "pixels"), ("instances per class", ""))
    for ax, (title, xlabel) in zip((ax_n, ax_side, ax_cls), titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    # one legend for the three panels, above them: inside, "best" still touched a bar (issue 18)
    fig.legend(*ax_n.get_legend_handles_labels(), loc="outside upper center", ncol=len(stats_by_split))
    return fig


def write_stats(stats_by_split: dict[str, dict], md_path: str | Path, png_path: str | Path) -> None:
    """Markdown tables and a 3-panel figure (objects/image, box sides with level boundaries, classes).

    Args:
        stats_by_split: {split name: dataset_stats(...)}, in the column order of the tables.
    """
    for path in (md_path, png_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text(_markdown(stats_by_split))
    _figure(stats_by_split).savefig(png_path, dpi=100, metadata={"Software": None})
