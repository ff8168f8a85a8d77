"""COCO-format detection data: dataset, resize/flip/normalise transforms, padded-GT collate, seeded loader.

One loader for every dataset (the synthetic `shapes` set and real COCO 2017 share the format; nothing is
special-cased). The transforms follow the reference 1x recipe [R: configs/_base_/datasets/coco_detection.py]:
keep-ratio resize to fit (long, short) = img_scale, horizontal flip (train only), RGB mean/std normalisation,
bottom/right zero padding to a multiple of size_divisor after normalisation.

Conventions (the glossary in docs/layout.md): boxes are xyxy pixels of the resized, unpadded image; labels are
contiguous 0..C-1 in sorted COCO category-id order (real COCO ids are 1..90 with gaps); G is padded per batch
with gt_mask (B, G).

Images without usable annotations are kept, for training too: they are valid negatives (the reference's
mmdet CocoDataset drops them from training with filter_empty_gt=True, about 1% of COCO train2017; we keep
them so that one rule serves every split and dataset).

Validation: the annotation file is checked completely at construction (cheap, pure Python over all records);
images are decoded lazily in __getitem__ (or all at once on first use with cache_images). Every problem raises
one DataError naming the file and the image / annotation id.

Boxes with a width or height <= 0 (a negative one is an annotation-tool or conversion bug; COCO's own
format has none) are dropped with a report, not rejected: they are left out of the training targets AND of
the evaluation ground truth, and logged with their annotation and image ids (the `data` stage lists every one
in reports/data_stats.md). Kept in COCOeval's GT they could never be matched (IoU 0 with any box): each would
be a silent false negative, or, where its w*h area is negative, silently ignored. We drop rather than reject
because the user's folder is never modified (`data.dataset: coco`), so a handful of broken boxes in an
otherwise usable export would otherwise block all work until the user rewrote their file outside the tool;
the box's intended extent is unknowable, so repairing it would be a guess.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tood.config import RunConfig, resolve_data_root

log = logging.getLogger(__name__)


class DataError(ValueError):
    """An annotation file or image is invalid; the message names the file and the image/annotation id."""


@dataclass
class Sample:
    image: Tensor  # (3, H, W) float32, normalised, resized (not padded)
    boxes: Tensor  # (G, 4) float32 xyxy pixels of the resized (and possibly flipped) image
    labels: Tensor  # (G,) int64 in 0..C-1
    meta: dict[str, Any]


@dataclass
class Batch:
    images: Tensor  # (B, 3, Hp, Wp) float32, zero-padded bottom/right to a multiple of size_divisor
    gt_boxes: Tensor  # (B, G, 4) float32 xyxy; padded rows are 0
    gt_labels: Tensor  # (B, G) int64; padded rows are 0 (use gt_mask, never the label, to find padding)
    gt_mask: Tensor  # (B, G) bool, True for real GTs
    metas: list[dict[str, Any]] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = {k: getattr(self, k).to(device, non_blocking=non_blocking) for k in _BATCH_TENSORS}
        return replace(self, **move)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return replace(self, **{k: getattr(self, k).pin_memory() for k in _BATCH_TENSORS})


_BATCH_TENSORS = ("images", "gt_boxes", "gt_labels", "gt_mask")
_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON integers only: excludes bool (an int subclass); cheap for 860k records


def _is_number(value: Any) -> bool:
    return (type(value) is int or type(value) is float) and math.isfinite(value)


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"annotation file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for section in _REQUIRED:
        if not isinstance(data.get(section), list):
            raise DataError(f"{path}: missing or non-list required section '{section}'")
    return data


def _index_records(data: dict, section: str, path: Path) -> dict[int, dict]:
    """id -> record for one section, after checking required keys, integer ids and uniqueness."""
    by_id: dict[int, dict] = {}
    kind = section[:-1]  # "images" -> "image"
    for i, rec in enumerate(data[section]):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: {section}[{i}] is not a JSON object")
        rec_id = rec.get("id")
        where = f"{path}: {kind} id {rec_id} ({section}[{i}])"
        missing = [k for k in _REQUIRED[section] if k not in rec]
        if missing:
            raise DataError(f"{where}: missing required key(s) {missing}")
        if not _is_int(rec_id):
            raise DataError(f"{where}: 'id' must be an integer")
        if rec_id in by_id:
            raise DataError(f"{where}: duplicate {kind} id")
        by_id[rec_id] = rec
    return by_id


def _check_images(images: dict[int, dict], path: Path) -> None:
    for image_id, rec in images.items():
        if not isinstance(rec["file_name"], str) or not rec["file_name"]:
            raise DataError(f"{path}: image id {image_id}: 'file_name' must be a non-empty string")
        if not (_is_int(rec["width"]) and _is_int(rec["height"]) and rec["width"] > 0 and rec["height"] > 0):
            raise DataError(
                f"{path}: image id {image_id} ({rec['file_name']}): width/height must be positive integers, "
                f"got {rec['width']!r}/{rec['height']!r}"
            )


def _check_annotations(anns: dict[int, dict], images: dict, cat_ids: dict, path: Path) -> None:
    for ann_id, ann in anns.items():
        where = f"{path}: annotation id {ann_id}"
        if not _is_int(ann["image_id"]) or ann["image_id"] not in images:
            raise DataError(f"{where}: image_id {ann['image_id']!r} is not an image id of this file")
        if not _is_int(ann["category_id"]) or ann["category_id"] not in cat_ids:
            raise DataError(f"{where}: category_id {ann['category_id']!r} is not a category id of this file")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h] of 4 finite numbers, got {bbox!r}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")


def load_coco(ann_file: str | Path) -> dict:
    """Read a COCO instances file and check every record (see _REQUIRED and the checks below).

    Returns the parsed dict unchanged. Raises DataError naming the file and the image / annotation id.
    """
    path = Path(ann_file)
    data = _load_json(path)
    images = _index_records(data, "images", path)
    cats = _index_records(data, "categories", path)
    _check_images(images, path)
    _check_annotations(_index_records(data, "annotations", path), images, cats, path)
    return data


def degenerate_boxes(annotations: list[dict]) -> list[dict]:
    """The annotations whose bbox has a width or height <= 0, as {id, image_id, bbox, problem}.

    problem is "negative width/height" or "zero width/height". See the module docstring for why these are
    left out of training and evaluation.
    """
    found = []
    for ann in annotations:
        w, h = ann["bbox"][2:]
        if w <= 0 or h <= 0:
            kind = "negative" if min(w, h) < 0 else "zero"
            problem = f"{kind} width/height"
            found.append(
                {"id": ann["id"], "image_id": ann["image_id"], "bbox": ann["bbox"], "problem": problem}
            )
    return found


def describe_boxes(boxes: list[dict], limit: int = 5) -> str:
    """'annotation id 7 (image id 3): negative width/height, bbox [...]; ...' for the first `limit`, one line."""
    shown = [
        f"annotation id {b['id']} (image id {b['image_id']}): {b['problem']}, bbox {b['bbox']}" for b in boxes
    ]
    more = f"; and {len(boxes) - limit} more" if len(boxes) > limit else ""
    return "; ".join(shown[:limit]) + more


def _training_targets(data: dict, cat_to_label: dict[int, int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (boxes (G, 4) float32 xyxy in original pixels, labels (G,) int64).

    Like mmdet's CocoDataset._parse_ann_info: iscrowd=1 annotations (RLE crowd regions) and boxes with
    w < 1 or h < 1 are not training targets (they stay in the GT json for COCOeval, where crowd regions
    are "ignore"). Unlike mmdet, which only drops boxes with no overlap, boxes are clipped to the image and
    dropped when less than 1 pixel of width or height remains inside it.
    """
    sizes = {rec["id"]: (rec["width"], rec["height"]) for rec in data["images"]}
    boxes: dict[int, list] = {image_id: [] for image_id in sizes}
    labels: dict[int, list] = {image_id: [] for image_id in sizes}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if w < 1 or h < 1 or x2 - x1 < 1 or y2 - y1 < 1:
            continue
        boxes[ann["image_id"]].append((x1, y1, x2, y2))
        labels[ann["image_id"]].append(cat_to_label[ann["category_id"]])
    return {
        i: (np.asarray(boxes[i], np.float32).reshape(-1, 4), np.asarray(labels[i], np.int64)) for i in sizes
    }


def _make_coco(data: dict, keep_ids: set[int], left_out: set[int]) -> COCO:
    """pycocotools COCO over exactly the kept images, without the `left_out` annotation ids (the degenerate
    boxes), with the keys COCOeval needs filled in.

    COCOeval reads gt['area'] and gt['iscrowd'] unconditionally; a file without them gets area = w*h of the
    bbox and iscrowd = 0 (the record's other keys are untouched, so evaluation sees the file's own boxes).
    """
    anns = [a for a in data["annotations"] if a["image_id"] in keep_ids and a["id"] not in left_out]
    for ann in anns:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = {**data, "images": [r for r in data["images"] if r["id"] in keep_ids], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def resized_shape(height: int, width: int, img_scale: tuple[int, int]) -> tuple[int, int, float]:
    """Keep-ratio size fitting (long, short) = img_scale, as mmcv.rescale_size: returns (new_h, new_w, scale).

    scale = min(long / max(h, w), short / min(h, w)); sides are rounded half-up (int(x + 0.5), as mmcv, not
    Python's banker's round): 200x100 at (1333, 800) -> scale 6.665 -> 1333x667.
    """
    long_side, short_side = max(img_scale), min(img_scale)
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5), scale


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, CMYK, P, RGBA, LA, ...) -> RGB. Alpha is dropped, not composited (as cv2's IMREAD_COLOR)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha is dropped next
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_image(path: Path, image_id: int, width: int, height: int) -> Tensor:
    """Decode one image file to (3, H, W) uint8 RGB, checking its size against the annotation file.

    EXIF orientation is deliberately NOT applied: COCO's width/height and boxes refer to the pixels as
    stored in the file, so rotating by the EXIF tag would misplace every box.
    """
    if not path.is_file():
        raise DataError(f"image file missing: {path} (image id {image_id})")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            rgb = np.asarray(_to_rgb(im))  # (H, W, 3) uint8
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} (image id {image_id}): {e}") from e
    if rgb.shape[:2] != (height, width):
        raise DataError(
            f"image {path} (image id {image_id}) is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but the annotation "
            f"file says {width}x{height}"
        )
    # numpy's single-threaded transpose: torch's 2-thread copy of this small uint8 tensor took 8 ms of CPU per
    # image on our 2-core machine when it was busy (a thread waiting for a core): 4.4 s of wall per preload
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)


def resize_image(image: Tensor, new_h: int, new_w: int) -> Tensor:
    """Bilinear resize of (3, H, W) uint8 -> (3, new_h, new_w) uint8 (half-pixel centres, no antialias:
    the same sampling as mmcv.imresize's cv2 INTER_LINEAR, rounded back to uint8 as cv2 does)."""
    if image.shape[-2:] == (new_h, new_w):
        return image
    out = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)  # (3, new_h, new_w)


class CocoDetection(Dataset):
    """A COCO instances file + image folder as training/eval samples.

    Indexing: `ds[i]` (train: flips with prob flip_prob from torch's global RNG, which DataLoader seeds per
    worker; eval: never flips) or `ds[(i, flip)]` with the flip decided by the caller, which is what
    EpochSampler / build_loader do so that flips depend only on (seed, epoch). Images are the sorted image ids.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        *,
        img_scale: tuple[int, int],
        size_divisor: int,
        flip_prob: float,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train: bool,
        max_images: int = 0,
        cache_images: bool = False,
    ):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.img_scale, self.size_divisor, self.flip_prob = tuple(img_scale), size_divisor, flip_prob
        self.train, self.cache_images = train, cache_images
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        data = load_coco(self.ann_file)
        images = {rec["id"]: rec for rec in data["images"]}
        cats = {rec["id"]: rec for rec in data["categories"]}
        self.cat_ids: list[int] = sorted(cats)  # label l <-> COCO category id cat_ids[l]
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.class_names: list[str] = [str(cats[c]["name"]) for c in self.cat_ids]  # label -> name
        self.image_ids: list[int] = sorted(images)[: max_images or None]
        self._records = [images[i] for i in self.image_ids]
        targets = _training_targets(data, self.cat_id_to_label)
        self._targets = [targets[i] for i in self.image_ids]
        kept = set(self.image_ids)
        self.left_out = [b for b in degenerate_boxes(data["annotations"]) if b["image_id"] in kept]
        if self.left_out:
            log.warning(
                "%s: %d boxes with zero or negative width/height are left out of training and evaluation: %s",
                self.ann_file, len(self.left_out), describe_boxes(self.left_out),
            )  # fmt: skip
        left_out_ids = {b["id"] for b in self.left_out}
        self.coco = _make_coco(data, kept, left_out_ids)  # for COCOeval: same images as this dataset
        self._cache: list[Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def geometry(self, index: int) -> tuple[int, int, float]:
        """(new_h, new_w, scale) of image `index`, from the annotation file alone (no decoding)."""
        rec = self._records[index]
        return resized_shape(rec["height"], rec["width"], self.img_scale)

    def load_resized(self, index: int) -> Tensor:
        """(3, new_h, new_w) uint8 RGB, resized; served from the in-memory cache when cache_images."""
        if self.cache_images:
            self.preload()
            return self._cache[index]
        return self._decode_resized(index)

    def preload(self) -> None:
        """Decode + resize every image once into memory (uint8). A corrupt file fails here, before step 1."""
        if self._cache is None:
            self._cache = [self._decode_resized(i) for i in range(len(self))]

    def _decode_resized(self, index: int) -> Tensor:
        rec = self._records[index]
        image = decode_image(self.image_dir / rec["file_name"], rec["id"], rec["width"], rec["height"])
        return resize_image(image, *self.geometry(index)[:2])  # (3, new_h, new_w)

    def __getitem__(self, key: int | tuple[int, bool]) -> Sample:
        if isinstance(key, tuple):
            index, flip = operator.index(key[0]), bool(key[1])
        else:
            index = operator.index(key)
            flip = self.train and self.flip_prob > 0 and bool(torch.rand(()) < self.flip_prob)
        rec = self._records[index]
        new_h, new_w, scale = self.geometry(index)
        # boxes use the actual per-axis factors after rounding the size (as mmdet's Resize), not `scale`
        scale_x, scale_y = new_w / rec["width"], new_h / rec["height"]
        image = self.load_resized(index)  # (3, H, W) uint8
        boxes_np, labels_np = self._targets[index]
        boxes = torch.from_numpy(boxes_np) * torch.tensor([scale_x, scale_y, scale_x, scale_y])  # (G, 4)
        if flip:
            image = image.flip(-1)
            boxes = torch.stack((new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]), dim=1)
        image = (image.float() - self.mean) / self.std  # (3, H, W)
        meta = {
            "image_id": rec["id"],
            "file_name": rec["file_name"],
            "orig_size": (rec["height"], rec["width"]),
            "img_size": (new_h, new_w),
            "scale_factor": scale,
            "scale_xy": (scale_x, scale_y),
            "flipped": flip,
            "size_divisor": self.size_divisor,
        }
        return Sample(image=image, boxes=boxes, labels=torch.from_numpy(labels_np.copy()), meta=meta)


def collate(samples: list[Sample], size_divisor: int | None = None) -> Batch:
    """Stack samples into a Batch: images zero-padded bottom/right (after normalisation, as mmdet pads) to a
    multiple of size_divisor (default: the samples' meta["size_divisor"]); GTs padded to
    G = max(1, max GTs in the batch) with gt_mask False on padded rows."""
    divisor = size_divisor or samples[0].meta["size_divisor"]
    B = len(samples)
    H = max(s.image.shape[1] for s in samples)
    W = max(s.image.shape[2] for s in samples)
    Hp, Wp = math.ceil(H / divisor) * divisor, math.ceil(W / divisor) * divisor
    G = max(1, max(len(s.labels) for s in samples))
    images = torch.zeros(B, 3, Hp, Wp)  # (B, 3, Hp, Wp)
    gt_boxes = torch.zeros(B, G, 4)  # (B, G, 4)
    gt_labels = torch.zeros(B, G, dtype=torch.int64)  # (B, G)
    gt_mask = torch.zeros(B, G, dtype=torch.bool)  # (B, G)
    for b, s in enumerate(samples):
        _, h, w = s.image.shape
        n = len(s.labels)
        images[b, :, :h, :w] = s.image
        gt_boxes[b, :n], gt_labels[b, :n], gt_mask[b, :n] = s.boxes, s.labels, True
    return Batch(images, gt_boxes, gt_labels, gt_mask, [s.meta for s in samples])


class EpochSampler(Sampler):
    """Yields (index, flip) pairs whose order and flips are a pure function of (seed, epoch).

    Flips come from one table of per-image draws for the epoch, so they do not depend on the number of
    workers, on the sampler order or on the rank (DDP ranks see different images of the same table).
    `base` (e.g. a DistributedSampler) decides the order when given and gets set_epoch forwarded. The epoch
    advances by one on every iteration; call set_epoch(e) to resume or to pin it (DDP convention).
    """

    def __init__(
        self, num_images: int, *, shuffle: bool, flip_prob: float, seed: int, base: Sampler | None = None
    ):
        if shuffle and base is not None:
            raise ValueError(
                "shuffle=True and a sampler are mutually exclusive (the sampler decides the order)"
            )
        self.num_images, self.shuffle, self.flip_prob = num_images, shuffle, flip_prob
        self.seed, self.base, self.epoch = seed, base, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.num_images

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0] >> 1)
        generator = torch.Generator().manual_seed(seed)
        flips = (torch.rand(self.num_images, generator=generator) < self.flip_prob).tolist()  # (N,)
        if self.base is not None:
            if hasattr(self.base, "set_epoch"):
                self.base.set_epoch(epoch)
            order = list(self.base)
        elif self.shuffle:
            order = torch.randperm(self.num_images, generator=generator).tolist()
        else:
            order = range(self.num_images)
        return iter([(i, flips[i]) for i in order])


def build_loader(
    dataset: CocoDetection,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    """DataLoader of Batches whose order and flips depend only on (seed, epoch): see EpochSampler.

    Flips only happen for a train dataset. With cache_images and workers, the cache is filled before the
    workers fork so they share it instead of each decoding its own copy.
    """
    flip_prob = dataset.flip_prob if dataset.train else 0.0
    epoch_sampler = EpochSampler(len(dataset), shuffle=shuffle, flip_prob=flip_prob, seed=seed, base=sampler)
    if dataset.cache_images and num_workers > 0:
        dataset.preload()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epoch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def build_dataset(cfg: RunConfig, data_root: Path | None, *, train: bool) -> CocoDetection:
    """The train or val split of cfg.data; `data_root` overrides cfg.data.root (e.g. DVC's repo root)."""
    d = cfg.data
    root = Path(data_root) if data_root is not None else resolve_data_root(d.root)  # $DVC_ROOT in queued exps
    images, ann = (d.train_images, d.train_ann) if train else (d.val_images, d.val_ann)
    return CocoDetection(
        root / images, root / ann, img_scale=d.img_scale, size_divisor=d.size_divisor,
        flip_prob=d.flip_prob if train else 0.0, mean=d.mean, std=d.std, train=train,
        max_images=d.max_train_images if train else d.max_val_images,
        cache_images=cfg.train.cache_images if train else False,
    )  # fmt: skip
