"""`data.dataset: coco`: a user's own COCO folder with real quirks is validated, reported, trained and
evaluated on as it is, and never modified; degenerate boxes are left out of training and evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest
import yaml
from coco_quirks import (
    LEFT_OUT,
    TRAIN_ANN,
    TRAIN_IMAGES,
    VAL_ANN,
    VAL_IMAGES,
    make_quirky_coco,
    snapshot,
)
from PIL import Image
from pycocotools.cocoeval import COCOeval

from pipeline.prepare_data import main as prepare_data
from tood.config import ConfigError
from tood.data.coco_folder import check_split
from tood.data.dataset import CocoDetection, DataError, collate

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _params(tmp_path: Path, root: Path, dataset: str = "coco") -> Path:
    data = {"dataset": dataset, "root": str(root), "train_images": TRAIN_IMAGES, "train_ann": TRAIN_ANN}
    data |= {"val_images": VAL_IMAGES, "val_ann": VAL_ANN, "img_scale": [64, 64]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"alpha": 1.0, "beta": 6.0, "data": data}))
    return path


def _prepare(tmp_path: Path, params: Path) -> tuple[dict, str]:
    out = tmp_path / "out"
    prepare_data(["--params", str(params), "--manifest", str(out / "manifest.json"),
                  "--stats-md", str(out / "stats.md"), "--stats-png", str(out / "stats.png")])  # fmt: skip
    return json.loads((out / "manifest.json").read_text()), (out / "stats.md").read_text()


def _dataset(root: Path, split: str) -> CocoDetection:
    images, ann = (TRAIN_IMAGES, TRAIN_ANN) if split == "train" else (VAL_IMAGES, VAL_ANN)
    return CocoDetection(
        root / images, root / ann, img_scale=(64, 64), size_divisor=32, flip_prob=0.0, mean=MEAN, std=STD,
        train=split == "train",
    )  # fmt: skip


@pytest.fixture
def quirky(tmp_path) -> Path:
    return make_quirky_coco(tmp_path / "my coco")


def test_data_stage_validates_and_reports_without_writing_to_the_folder(tmp_path, quirky):
    before = snapshot(quirky)
    manifest, report = _prepare(tmp_path, _params(tmp_path, quirky))
    assert snapshot(quirky) == before  # same files, bytes and mtimes: nothing written, nothing added
    assert manifest["dataset"] == "coco" and set(manifest["splits"]) == {"train", "val"}
    train = manifest["splits"]["train"]
    assert (train["image_dir"], train["ann_file"], train["num_images"]) == (TRAIN_IMAGES, TRAIN_ANN, 3)
    assert train["ann_sha256"] == check_split(quirky / TRAIN_IMAGES, quirky / TRAIN_ANN)["ann_sha256"]
    for split in ("train", "val"):
        assert manifest["splits"][split]["left_out_annotation_ids"] == [i for i, _, _ in LEFT_OUT[split]]
        for ann_id, image_id, problem in LEFT_OUT[split]:
            assert f"| {split} | {ann_id} | {image_id} |" in report and problem in report
    assert report.startswith("# `coco` dataset statistics")
    assert "| train | 3 | 7 | 1 | 1 | L 1, RGB 2 | 2 |" in report  # images, anns, crowd, empty, modes
    assert "| 3 | car |" in report and "| 90 | toothbrush |" in report


def test_manifest_follows_the_content_of_the_files(tmp_path, quirky):
    params = _params(tmp_path, quirky)
    first, _ = _prepare(tmp_path, params)
    assert _prepare(tmp_path, params)[0] == first  # same files: same manifest
    image = quirky / VAL_IMAGES / "val one.png"
    Image.new("RGB", Image.open(image).size, (1, 2, 3)).save(image)  # same name and size, new pixels
    changed, _ = _prepare(tmp_path, params)
    assert changed["splits"]["val"]["images_sha256"] != first["splits"]["val"]["images_sha256"]
    assert changed["splits"]["train"] == first["splits"]["train"]


def test_training_targets_and_evaluation_ground_truth(quirky, caplog):
    with caplog.at_level(logging.WARNING, logger="tood.data.dataset"):
        train, val = _dataset(quirky, "train"), _dataset(quirky, "val")
    assert "annotation id 24 (image id 11): negative width/height" in caplog.text
    assert train.cat_ids == [3, 17, 90] and train.class_names == ["car", "cat", "toothbrush"]
    assert [b["id"] for b in val.left_out] == [i for i, _, _ in LEFT_OUT["val"]]
    grey = train[(train.image_ids.index(2), False)]  # "grey cat.jpg": greyscale, 3 boxes left out
    assert grey.image.shape[0] == 3 and grey.labels.tolist() == [1]  # only ann 15 (cat) is a target
    assert grey.meta["file_name"] == "grey cat.jpg"
    street = train[(0, False)]
    assert street.labels.tolist() == [0, 2]  # the crowd region is not a target
    batch = collate([train[(i, False)] for i in range(len(train))])
    assert batch.gt_mask.sum(1).tolist() == [2, 1, 0]  # the empty image stays, as a negative
    assert sorted(val.coco.anns) == [21, 22, 23, 26]  # left out: 24, 25; the crowd 26 stays (ignored)


def test_perfect_detections_score_ap_1_despite_the_broken_boxes(quirky):
    val = _dataset(quirky, "val")
    gts = [a for a in val.coco.dataset["annotations"] if not a["iscrowd"]]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gts]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(val.coco, val.coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    # the negative-height box (24, area 60) could never be matched: kept in the GT it would cap recall
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[8] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda root: (root / VAL_IMAGES / "val grey.png").unlink(), ["image id 12", "val grey.png"]),
        (
            lambda root: (root / VAL_IMAGES / "val one.png").write_bytes(b"junk"),
            ["image id 11", "not a readable"],
        ),
        (
            lambda root: Image.new("RGB", (41, 40)).save(root / VAL_IMAGES / "val grey.png"),
            ["image id 12", "41x40", "40x56"],
        ),
    ],
)
def test_unusable_images_are_named_in_one_line(tmp_path, quirky, edit, needles):
    edit(quirky)
    with pytest.raises(DataError) as err:
        _prepare(tmp_path, _params(tmp_path, quirky))
    message = str(err.value)
    assert "\n" not in message and "val set.json" in message and "1 of 3 images" in message
    assert all(n in message for n in needles), message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_missing_folder_or_one_holding_the_manifest_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.root: .*absent.* is not a folder"):
        _prepare(tmp_path, _params(tmp_path, tmp_path / "absent"))
    with pytest.raises(ConfigError, match="holds the stage's manifest"):
        _prepare(tmp_path, _params(tmp_path, tmp_path))  # the manifest would land in the user's folder


def test_shapes_refuses_to_generate_into_a_users_folder(tmp_path, quirky):
    before = snapshot(quirky)
    with pytest.raises(ConfigError) as err:
        _prepare(tmp_path, _params(tmp_path, quirky, dataset="shapes"))
    assert "data.root" in str(err.value) and str(quirky) in str(err.value)
    assert snapshot(quirky) == before
