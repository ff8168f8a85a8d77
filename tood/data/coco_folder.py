"""A user's own COCO-format folder (`data.dataset: coco`): validated, hashed and reported, never modified.

`check_split` reads one split's instances file with tood.data.dataset's strict checks, then reads every listed image
once: it must exist, open, and have the width/height the file gives (from the image header; a full decode
of a COCO-sized folder would take tens of minutes on 2 cores, so a truncated file is found when training
first decodes it, before step 1 with `train.cache_images`), and its bytes are hashed. `folder_manifest`
turns the results into what DVC tracks (data/manifest.json): content hashes and relative paths only, so it
changes exactly when the user's files do. Nothing is ever written under the folder.

Degenerate boxes (width or height <= 0) are listed here with their ids; tood.data.dataset leaves them out of
training and evaluation (its module docstring says why they are dropped rather than rejected).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

from PIL import Image

from tood.data.dataset import DataError, degenerate_boxes, load_coco

_SHOWN = 5  # problems named in one DataError line
_LISTED = 100  # left-out boxes listed in the markdown report (all of them are in the manifest)


def check_split(image_dir: str | Path, ann_file: str | Path) -> dict:
    """Validate one split (annotations + every image file) and describe it.

    Returns {ann_sha256, images_sha256, num_images, num_annotations, num_crowd, images_without_annotations,
    image_modes {PIL mode: count}, category_ids, left_out [degenerate boxes with file_name]}.
    Raises DataError naming the annotation file and, for image problems, each image's id and path.
    """
    image_dir, ann_file = Path(image_dir), Path(ann_file)
    data = load_coco(ann_file)
    records = sorted(data["images"], key=lambda r: r["id"])
    problems, modes, digest = [], Counter(), hashlib.sha256()
    for rec in records:
        mode_or_problem, content_hash = _check_image(image_dir / rec["file_name"], rec)
        if content_hash is None:
            problems.append(f"image id {rec['id']} ({image_dir / rec['file_name']}): {mode_or_problem}")
            continue
        modes[mode_or_problem] += 1
        digest.update(rec["file_name"].encode() + b"\0" + content_hash)
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise DataError(
            f"{ann_file}: {len(problems)} of {len(records)} images cannot be used: "
            + "; ".join(problems[:_SHOWN])
            + more
        )
    anns = data["annotations"]
    names = {r["id"]: r["file_name"] for r in records}
    return {
        "ann_sha256": hashlib.sha256(ann_file.read_bytes()).hexdigest(),
        "images_sha256": digest.hexdigest(),
        "num_images": len(records),
        "num_annotations": len(anns),
        "num_crowd": sum(1 for a in anns if a.get("iscrowd", 0)),
        "images_without_annotations": len(names.keys() - {a["image_id"] for a in anns}),
        "image_modes": dict(sorted(modes.items())),
        "category_ids": sorted(c["id"] for c in data["categories"]),
        "left_out": [{**b, "file_name": names[b["image_id"]]} for b in degenerate_boxes(anns)],
    }


def _check_image(path: Path, rec: dict) -> tuple[str, bytes | None]:
    """(PIL mode, sha256 digest of the bytes) of a usable image, else (what is wrong, None)."""
    try:
        content = path.read_bytes()
    except OSError as e:
        return (e.strerror or type(e).__name__).lower(), None
    try:
        with Image.open(io.BytesIO(content)) as im:  # reads the header only
            size, mode = im.size, im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({e})", None
    if size != (rec["width"], rec["height"]):
        return (
            f"is {size[0]}x{size[1]} (WxH) but the annotation file says {rec['width']}x{rec['height']}",
            None,
        )
    return mode, hashlib.sha256(content).digest()


def folder_manifest(splits: dict[str, tuple[str, str]], checks: dict[str, dict]) -> dict:
    """What downstream DVC stages depend on: per split, the relative paths and the content hashes.

    Args:
        splits: {split: (image folder, annotation file)}, relative to data.root as params.yaml gives them.
        checks: {split: check_split(...)}.
    """
    return {
        "dataset": "coco",
        "splits": {
            split: {
                "image_dir": image_dir,
                "ann_file": ann_file,
                "ann_sha256": checks[split]["ann_sha256"],
                "images_sha256": checks[split]["images_sha256"],
                "num_images": checks[split]["num_images"],
                "left_out_annotation_ids": [b["id"] for b in checks[split]["left_out"]],
            }
            for split, (image_dir, ann_file) in splits.items()
        },
    }


def stats_ready(data: dict) -> dict:
    """A copy of a checked COCO dict as tood.data.shapes.dataset_stats reads it: the degenerate boxes left out
    (as in training and evaluation) and `area` filled in as w*h where the file has none."""
    left_out = {b["id"] for b in degenerate_boxes(data["annotations"])}
    anns = [
        a if "area" in a else {**a, "area": a["bbox"][2] * a["bbox"][3]}  # copies only what changes
        for a in data["annotations"]
        if a["id"] not in left_out
    ]
    return {**data, "annotations": anns}


def validation_markdown(root: Path, checks: dict[str, dict]) -> str:
    """The report's section on the user's folder: per-split counts, then every left-out box (up to _LISTED)."""
    lines = ["## Your COCO folder", "", f"`{root}`, read only: nothing is written under it.", ""]
    lines += [
        "| split | images | annotations | crowd | images without annotations | image modes | left out |"
    ]
    lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for split, c in checks.items():
        modes = ", ".join(f"{m} {n}" for m, n in c["image_modes"].items())
        row = [split, c["num_images"], c["num_annotations"], c["num_crowd"], c["images_without_annotations"]]
        lines.append("| " + " | ".join(str(v) for v in [*row, modes, len(c["left_out"])]) + " |")
    left_out = [(split, b) for split, c in checks.items() for b in c["left_out"]]
    if left_out:
        lines += ["", "### Boxes left out of training and evaluation", ""]
        lines += ["Width or height <= 0: no detection can overlap such a box, so it could never be matched."]
        lines += [
            "",
            "| split | annotation id | image id | file | bbox | problem |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for split, b in left_out[:_LISTED]:
            lines.append(
                f"| {split} | {b['id']} | {b['image_id']} | {b['file_name']} | {b['bbox']} | {b['problem']} |"
            )
        if len(left_out) > _LISTED:
            lines.append(f"\n... and {len(left_out) - _LISTED} more (every id is in data/manifest.json).")
    return "\n".join(lines) + "\n"
