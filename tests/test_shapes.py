"""tood/data/shapes.py and the `data` stage (pipeline/prepare_data.py): determinism, valid COCO, difficulty, statistics, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from figure_layout import layout_problems
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.prepare_data import main
from tood.config import ShapesConfig
from tood.data.shapes import (
    CATEGORY_IDS,
    KINDS,
    MARKER,
    ForeignFolderError,
    _figure,
    dataset_stats,
    fpn_levels,
    generate,
    write_stats,
)
from tood.model.boxes import pairwise_iou

TINY = ShapesConfig(seed=3, num_train=6, num_val=3, image_size=64, num_classes=6, max_objects=8)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate(TINY, root)
    return root


@pytest.fixture(scope="module")
def default_size(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("default_size")
    generate(ShapesConfig(seed=0, num_train=40, num_val=1, image_size=128), root)
    return root


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tiny, tmp_path):
    generate(TINY, tmp_path / "again")
    first, again = _files(tiny), _files(tmp_path / "again")
    assert first.keys() == again.keys()
    assert len([k for k in first if k.endswith(".jpg")]) == TINY.num_train + TINY.num_val
    assert first == again

    generate(ShapesConfig(**{**TINY.__dict__, "seed": 4}), tmp_path / "other")
    other = _files(tmp_path / "other")
    assert other["annotations/instances_train.json"] != first["annotations/instances_train.json"]
    assert all(other[k] != first[k] for k in first if k.endswith(".jpg"))


def test_images_do_not_depend_on_each_other(tiny, tmp_path):
    generate(ShapesConfig(**{**TINY.__dict__, "num_train": 2}), tmp_path)
    for name, data in _files(tmp_path / "train").items():
        assert (tiny / "train" / name).read_bytes() == data


def test_regenerating_removes_stale_files(tiny, tmp_path):
    generate(TINY, tmp_path)
    (tmp_path / "train" / "stale.jpg").write_bytes(b"x")
    generate(ShapesConfig(**{**TINY.__dict__, "num_train": 2}), tmp_path)
    assert len(list((tmp_path / "train").iterdir())) == 2


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_are_valid_coco(tiny, split):
    coco = COCO(str(tiny / "annotations" / f"instances_{split}.json"))
    images, anns = coco.dataset["images"], coco.dataset["annotations"]
    assert len(images) == (TINY.num_train if split == "train" else TINY.num_val)
    assert len({i["id"] for i in images}) == len(images) and len({a["id"] for a in anns}) == len(anns)
    assert [c["id"] for c in coco.dataset["categories"]] == list(CATEGORY_IDS[: TINY.num_classes])
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(coco.dataset)
    for img in images:
        with Image.open(tiny / split / img["file_name"]) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"]) == (64, 64)
    assert anns, "a tiny split should still have objects"
    for a in anns:
        img = coco.imgs[a["image_id"]]  # KeyError if the image does not exist
        assert a["category_id"] in coco.cats and a["iscrowd"] == 0
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, float) for v in a["bbox"])
        assert w > 0 and h > 0 and a["area"] > 0 and x >= 0 and y >= 0
        assert x + w <= img["width"] and y + h <= img["height"]
        mask = coco.annToMask(a)  # the RLE decodes to the visible pixels and the box is their extent
        assert mask.sum() == a["area"] and a["area"] <= w * h
        assert mask_utils.toBbox(a["segmentation"]).tolist() == a["bbox"]
        assert 0.3 <= a["visible_fraction"] <= 1.0


def test_default_size_is_crowded_overlapping_and_multiscale(default_size):
    data = json.loads((default_size / "annotations" / "instances_train.json").read_text())
    anns = data["annotations"]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])  # (N, 4)
    image_ids = torch.tensor([a["image_id"] for a in anns])
    same_image = image_ids[:, None] == image_ids[None, :]
    iou = pairwise_iou(boxes, boxes).masked_fill(~same_image, 0).fill_diagonal_(0)  # (N, N)
    assert iou.max() > 0.3, "crowded scenes must contain overlapping boxes"
    sides = (boxes[:, 2:] - boxes[:, :2]).prod(1).sqrt()
    assert sides.min() < 8 and sides.max() > 90  # 4 px .. 0.9 * 128
    wh = boxes[:, 2:] - boxes[:, :2]
    assert (wh[:, 0] / wh[:, 1]).max() > 2.5 and (wh[:, 0] / wh[:, 1]).min() < 0.4
    assert len(set(fpn_levels(wh.numpy()).tolist())) >= 2  # P3 and P4 at least
    assert {a["category_id"] for a in anns} == set(CATEGORY_IDS[:6])
    assert min(a["visible_fraction"] for a in anns) < 0.6  # occlusion happens
    assert data["info"]["num_dropped_occluded"] > 0
    per_image = np.bincount(image_ids.numpy())
    assert per_image.max() >= 8  # some crowded images


def test_fpn_levels_known_answers():
    # 8*stride priors: 64, 128, 256, 512, 1024; a square side s switches level at 64*sqrt(2) = 90.5 etc.
    wh = np.array([[4, 4], [64, 64], [90, 90], [91, 91], [200, 200], [300, 300], [1000, 1000], [8, 200]])
    assert fpn_levels(wh).tolist() == [0, 0, 0, 1, 2, 2, 4, 0]


def _hand_made_coco(path: Path) -> None:
    coco = {
        "info": {"num_dropped_occluded": 2},
        "licenses": [],
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 400} for i in (10, 20, 30)],
        "categories": [{"id": k, "name": n, "supercategory": "s"} for k, n in ((1, "a"), (5, "b"))],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0,
             "iscrowd": 0, "visible_fraction": 1.0},
            {"id": 2, "image_id": 10, "category_id": 5, "bbox": [0.0, 0.0, 10.0, 5.0], "area": 50.0,
             "iscrowd": 0, "visible_fraction": 0.5},
            {"id": 3, "image_id": 20, "category_id": 1, "bbox": [0.0, 0.0, 100.0, 100.0], "area": 10000.0,
             "iscrowd": 0, "visible_fraction": 1.0},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(coco))


def test_dataset_stats_match_hand_count(tmp_path):
    _hand_made_coco(tmp_path / "ann.json")
    st = dataset_stats(tmp_path / "ann.json")
    assert st["num_images"] == 3 and st["num_annotations"] == 3
    assert st["classes"] == [{"id": 1, "name": "a", "count": 1}, {"id": 5, "name": "b", "count": 2}]
    assert st["objects_per_image"] == {"min": 0, "mean": 1.0, "max": 2, "hist": [1, 1, 1]}
    assert st["fpn_levels"] == {
        "P3": 2,
        "P4": 1,
        "P5": 0,
        "P6": 0,
        "P7": 0,
    }  # 10x10, 10x5 -> P3; 100x100 -> P4
    assert st["box_side"] == {"min": pytest.approx(50**0.5), "median": 10.0, "max": 100.0}
    assert st["area_buckets"] == {"small": 2, "medium": 0, "large": 1}
    occ = st["occlusion"]
    assert occ["mean_visible_fraction"] == pytest.approx(2.5 / 3) and occ["min_visible_fraction"] == 0.5
    assert occ["occluded_share"] == pytest.approx(1 / 3)
    assert occ["overlapping_share"] == pytest.approx(2 / 3)  # boxes 1 and 2 have IoU 0.5
    assert occ["dropped"] == 2
    assert sum(st["side_hist"]["counts"]) == 3

    write_stats({"train": st}, tmp_path / "r" / "stats.md", tmp_path / "r" / "fig.png")
    md = (tmp_path / "r" / "stats.md").read_text()
    assert (
        "| train | 3 | 3 | 0 | 1.00 | 2 |" in md
        and "| 5 | b | 2 |" in md
        and "| train | 2 | 1 | 0 | 0 | 0 |" in md
    )


def test_cli_writes_dataset_manifest_and_report(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(
        "alpha: 1.0\nbeta: 6.0\n"
        "shapes:\n  seed: 1\n  num_train: 5\n  num_val: 2\n  image_size: 64\n  max_objects: 6\n"
        "data:\n  root: data/shapes\n"
    )
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # relative data roots resolve against the DVC root
    out, manifest_path, md, png = (
        tmp_path / "data" / "shapes",
        tmp_path / "data" / "manifest.json",
        tmp_path / "reports" / "data_stats.md",
        tmp_path / "figs" / "d.png",
    )
    argv = [
        "--params",
        str(params),
        "--manifest",
        str(manifest_path),
        "--stats-md",
        str(md),
        "--stats-png",
        str(png),
    ]
    main(argv)
    assert len(list((out / "train").glob("*.jpg"))) == 5 and len(list((out / "val").glob("*.jpg"))) == 2
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["num_train"] == 5 and manifest["config"]["image_size"] == 64
    for split in ("train", "val"):
        ann = out / manifest["annotations"][split]["file"]
        assert hashlib.sha256(ann.read_bytes()).hexdigest() == manifest["annotations"][split]["sha256"]
        assert manifest["images"][split]["files"] == sorted(p.name for p in (out / split).glob("*.jpg"))
    text = md.read_text()
    for heading in ("Instances per class", "Occlusion and overlap", "Box sizes per FPN level"):
        assert heading in text
    assert (
        "| train | 5 |" in text
        and "| val | 2 |" in text
        and f"| {CATEGORY_IDS[0]} | {KINDS[0].name} |" in text
    )
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500

    before = manifest_path.read_bytes()
    main(argv)  # idempotent: same params -> same bytes
    assert manifest_path.read_bytes() == before


def test_generator_marks_its_folder_and_regenerates_only_there(tmp_path):
    generate(TINY, tmp_path / "new" / "shapes")  # a folder that does not exist yet is created and marked
    assert (tmp_path / "new" / "shapes" / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    generate(TINY, tmp_path / "empty")  # an empty folder holds nothing to lose
    assert (tmp_path / "empty" / MARKER).is_file()
    legacy = tmp_path / "legacy"  # generated before the marker existed: recognised by its own files
    generate(TINY, legacy)
    (legacy / MARKER).unlink()
    generate(TINY, legacy)
    assert (legacy / MARKER).is_file()


def _folder_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    root = tmp_path / "users"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


_FOREIGN = {  # folders the generator must refuse: name -> files in it
    "notes": {"notes.txt": b"mine"},
    "coco_layout": {"train/a.jpg": b"x", "val/b.jpg": b"y", "annotations/instances_train.json": b"{}"},
    "other_generator": {
        "annotations/instances_train.json": json.dumps({"info": {"contributor": "someone"}}).encode(),
        "annotations/instances_val.json": json.dumps({"info": {"contributor": "someone"}}).encode(),
        "train/a.jpg": b"x",
    },
}


@pytest.mark.parametrize("case", sorted(_FOREIGN))
def test_generator_refuses_a_folder_it_did_not_make(tmp_path, case):
    root = _folder_with(tmp_path, _FOREIGN[case])
    before = _files(root)
    with pytest.raises(ForeignFolderError, match=f"{root} already exists and was not made by the shapes"):
        generate(TINY, root)
    assert _files(root) == before and not (root / MARKER).exists()


def test_generator_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ForeignFolderError, match="file"):
        generate(TINY, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_the_stats_figure_legend_covers_no_bar():
    """Issue 18: the legend touched the `cross` bar. Counts shaped like the committed data_stats.png (four
    classes of about equal size, so no corner of the class panel is free)."""
    edges = np.geomspace(2, 1000, 41)
    stats = {
        split: {
            "objects_per_image": {"hist": hist},
            "side_hist": {
                "counts": np.interp(edges[:-1], [10, 30, 60, 90], [0, peak, peak, 0]),
                "edges": edges,
            },
            "classes": [
                {"name": n, "count": c} for n, c in zip(("rectangle", "triangle", "ring", "cross"), counts)
            ],
        }
        for split, hist, peak, counts in (
            ("train", [0, 189, 127, 114, 102, 80, 52, 31, 9], 250, [575, 557, 511, 549]),
            ("val", [0, 143, 92, 71, 79, 49, 48, 22, 8], 200, [431, 390, 414, 369]),
        )
    }
    assert layout_problems(_figure(stats)) == []
