"""tood.data.dataset: COCO loading, resize/flip/normalise known answers, collate padding, seeded loader, bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from tood.data.dataset import (
    Batch,
    CocoDetection,
    DataError,
    EpochSampler,
    build_loader,
    collate,
    decode_image,
    resized_shape,
)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
WIDE_RGB = (10, 200, 90)  # constant colour of the 200x100 image
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
CROWD_RLE = {"counts": [0, 100, 64 * 48 - 100], "size": [48, 64]}  # uncompressed RLE, as COCO crowds


def _write_images(image_dir: Path) -> list[dict]:
    """Every image mode real COCO has (RGB, L, CMYK) plus RGBA and palette; returns the JSON records."""
    image_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 100), WIDE_RGB).save(image_dir / "wide.png")
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 3, (48, 1)), "L").save(image_dir / "gray.jpg")
    Image.new("CMYK", (48, 64), (0, 128, 255, 30)).save(image_dir / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (1, 2, 3, 0)).save(image_dir / "rgba.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 250, 20, 30] + [0] * 762)
    pal.save(image_dir / "pal.png", transparency=0)
    Image.new("RGB", (30, 20), (0, 0, 0)).save(image_dir / "empty.png")
    sizes = [("wide.png", 200, 100), ("gray.jpg", 64, 48), ("cmyk.jpg", 48, 64), ("rgba.png", 40, 40)]
    sizes += [("pal.png", 32, 32), ("empty.png", 30, 20)]
    ids = [1, 2, 3, 4, 5, 7]
    return [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in zip(ids, sizes)]


def _annotations() -> list[dict]:
    def ann(ann_id, image_id, cat, bbox, **extra):
        return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}

    return [
        ann(101, 1, 3, [10, 20, 40, 40], area=1600.0, iscrowd=0, segmentation=[]),
        ann(102, 1, 90, [100, 0, 50, 30]),  # no 'area', no 'segmentation', no 'iscrowd'
        ann(103, 2, 1, [0, 0, 10, 10], iscrowd=1, segmentation=CROWD_RLE, area=100),  # crowd: ignored
        ann(104, 2, 1, [5, 5, 0.5, 10]),  # w < 1: ignored
        ann(105, 2, 1, [50, 40, 30, 20]),  # sticks out of the 64x48 image: clipped to [50, 40, 64, 48]
        ann(108, 2, 3, [0, 0, 0, 5]),  # zero width: ignored
        ann(106, 3, 1, [0, 0, 10, 10]),
        ann(107, 4, 3, [4, 4, 20, 20]),
        ann(109, 5, 90, [1, 1, 8, 8]),
    ]


def _assert_close(actual, expected):
    # not torch.testing.assert_close: its first call imports torch.distributed.tensor (~6 s on 2 cores)
    assert actual.shape == expected.shape and torch.allclose(actual, expected, rtol=1e-6, atol=1e-4), actual


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    images = _write_images(tmp_path / "img")
    data = {"images": images, "annotations": _annotations(), "categories": CATEGORIES}
    return tmp_path / "img", _write_json(tmp_path / "instances.json", data)


def _dataset(paths, img_scale=(1333, 800), train=True, flip_prob=0.0, **kw) -> CocoDetection:
    image_dir, ann_file = paths
    return CocoDetection(
        image_dir, ann_file, img_scale=img_scale, size_divisor=32, flip_prob=flip_prob, mean=MEAN, std=STD,
        train=train, **kw,
    )  # fmt: skip


def test_resized_shape_known_answers():
    assert resized_shape(100, 200, (1333, 800)) == (667, 1333, 6.665)  # 666.5 rounds half-up, as mmcv
    assert resized_shape(480, 640, (1333, 800))[:2] == (800, 1067)  # short side binds: 640 * 5/3 = 1066.7
    assert resized_shape(100, 200, (800, 1333))[:2] == (667, 1333)  # (long, short) order does not matter


def test_labels_are_contiguous_in_sorted_category_id_order(tiny):
    ds = _dataset(tiny, img_scale=(64, 48))
    assert ds.cat_ids == [1, 3, 90] and ds.num_classes == 3
    assert ds.class_names == ["person", "car", "toothbrush"]
    assert ds[0].labels.tolist() == [1, 2]  # category 3 -> 1, category 90 -> 2
    assert ds.image_ids == [1, 2, 3, 4, 5, 7]  # the image without annotations is kept


def test_resize_scales_image_and_boxes_exactly(tiny):
    s = _dataset(tiny)[0]  # 200x100 at (1333, 800): scale 6.665 -> 1333x667
    assert s.image.shape == (3, 667, 1333)
    assert s.meta["img_size"] == (667, 1333) and s.meta["orig_size"] == (100, 200)
    assert s.meta["scale_factor"] == 6.665 and s.meta["scale_xy"] == (1333 / 200, 667 / 100)
    assert s.meta["image_id"] == 1 and s.meta["file_name"] == "wide.png" and s.meta["flipped"] is False
    expected = [[66.65, 133.4, 333.25, 400.2], [666.5, 0.0, 999.75, 200.1]]  # x * 6.665, y * 6.67
    _assert_close(s.boxes, torch.tensor(expected))


def test_normalisation_of_a_constant_image(tiny):
    image = _dataset(tiny)[0].image
    expected = (torch.tensor(WIDE_RGB, dtype=torch.float32) - torch.tensor(MEAN)) / torch.tensor(STD)
    _assert_close(image, expected.view(3, 1, 1).expand_as(image))


def test_flip_mirrors_image_and_boxes_in_resized_width(tiny):
    ds = _dataset(tiny, flip_prob=1.0)
    plain, flipped = ds[(0, False)], ds[0]  # an int index draws the flip: p = 1 always flips
    assert flipped.meta["flipped"] and not plain.meta["flipped"]
    W = 1333.0
    x1, y1, x2, y2 = plain.boxes.unbind(1)
    _assert_close(flipped.boxes, torch.stack((W - x2, y1, W - x1, y2), 1))
    _assert_close(flipped.boxes[0], torch.tensor([999.75, 133.4, 1266.35, 400.2]))
    assert torch.equal(flipped.image, plain.image.flip(-1))


def test_collate_pads_images_after_normalisation_and_gts_with_mask(tiny):
    ds = _dataset(tiny)
    a, empty = ds[0], ds[5]  # 1333x667 with 2 GTs, 30x20 -> 1200x800 with none
    batch = collate([a, empty])
    assert batch.images.shape == (2, 3, 800, 1344)  # max sides 800, 1333 -> multiples of 32
    assert torch.equal(batch.images[0, :, :667, :1333], a.image)
    assert batch.images[0, :, 667:].abs().sum() == 0 and batch.images[0, :, :, 1333:].abs().sum() == 0
    assert batch.gt_boxes.shape == (2, 2, 4) and batch.gt_labels.shape == batch.gt_mask.shape == (2, 2)
    assert batch.gt_mask.tolist() == [[True, True], [False, False]]
    assert batch.gt_boxes[1].abs().sum() == 0 and batch.gt_labels[1].tolist() == [0, 0]
    only_empty = collate([empty])
    assert only_empty.gt_boxes.shape == (1, 1, 4) and not only_empty.gt_mask.any()  # G >= 1
    assert collate([empty], size_divisor=128).images.shape == (1, 3, 896, 1280)
    assert isinstance(batch.to("cpu"), Batch) and len(batch.metas) == 2


def test_ignored_crowd_tiny_and_clipped_boxes(tiny):
    s = _dataset(tiny, img_scale=(64, 48))[1]  # gray 64x48 at scale 1
    assert s.meta["scale_factor"] == 1.0
    _assert_close(s.boxes, torch.tensor([[50.0, 40.0, 64.0, 48.0]]))  # only the clipped one
    assert s.labels.tolist() == [0]


def test_image_modes_become_rgb(tiny):
    image_dir = tiny[0]
    gray = decode_image(image_dir / "gray.jpg", 2, 64, 48)
    assert gray.shape == (3, 48, 64) and gray.dtype == torch.uint8
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    cmyk = decode_image(image_dir / "cmyk.jpg", 3, 48, 64)
    assert torch.equal(
        cmyk, torch.from_numpy(np.array(Image.open(image_dir / "cmyk.jpg").convert("RGB"))).permute(2, 0, 1)
    )
    assert decode_image(image_dir / "rgba.png", 4, 40, 40)[:, 0, 0].tolist() == [1, 2, 3]  # alpha dropped
    assert decode_image(image_dir / "pal.png", 5, 32, 32)[:, 0, 0].tolist() == [250, 20, 30]
    for s in _dataset(tiny, img_scale=(64, 48)):
        assert s.image.shape[0] == 3 and torch.isfinite(s.image).all()


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored pixels stay 40 wide, 20 high
    Image.new("RGB", (40, 20), (9, 9, 9)).save(tmp_path / "rot.jpg", exif=exif)
    assert decode_image(tmp_path / "rot.jpg", 1, 40, 20).shape == (3, 20, 40)


def test_coco_object_is_evaluable_without_area_keys(tiny):
    ds = _dataset(tiny, img_scale=(64, 48), max_images=1)  # image 1: GTs with and without area
    assert ds.coco.anns[102]["area"] == 1500.0 and ds.coco.anns[102]["iscrowd"] == 0
    gts = [a for a in ds.coco.dataset["annotations"] if not a["iscrowd"]]
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gts
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_max_images_keeps_first_ids_and_restricts_coco(tiny):
    ds = _dataset(tiny, img_scale=(64, 48), max_images=2)
    assert ds.image_ids == [1, 2] and len(ds) == 2
    assert sorted(ds.coco.getImgIds()) == [1, 2]
    assert {a["image_id"] for a in ds.coco.dataset["annotations"]} == {1, 2}


def test_cache_gives_identical_samples_without_redecoding(tiny):
    plain, cached = _dataset(tiny, img_scale=(64, 48)), _dataset(tiny, img_scale=(64, 48), cache_images=True)
    expected = [plain[(i, True)].image for i in range(len(plain))]
    cached[(0, False)]  # first use decodes and resizes every image
    for f in tiny[0].iterdir():
        f.unlink()
    for i, image in enumerate(expected):
        assert torch.equal(cached[(i, True)].image, image)  # flip + normalise still per sample


def test_eval_dataset_never_flips(tiny):
    ds = _dataset(tiny, img_scale=(64, 48), train=False, flip_prob=1.0)
    assert not ds[0].meta["flipped"]
    batches = list(build_loader(ds, 3, shuffle=False, seed=0, drop_last=False))
    assert [m["image_id"] for b in batches for m in b.metas] == ds.image_ids
    assert not any(m["flipped"] for b in batches for m in b.metas)


def _epoch_trace(loader) -> list[tuple[int, bool]]:
    return [(m["image_id"], m["flipped"]) for b in loader for m in b.metas]


def test_loader_order_and_flips_depend_only_on_seed_and_epoch(tiny):
    ds = _dataset(tiny, img_scale=(32, 32), flip_prob=0.5)
    first = build_loader(ds, 2, shuffle=True, seed=0, drop_last=False)
    run_a = [_epoch_trace(first) for _ in range(3)]
    run_b = [_epoch_trace(build_loader(ds, 2, shuffle=True, seed=0, drop_last=False)) for _ in range(1)]
    assert run_a[0] == run_b[0] and run_a[0] != run_a[1]  # same seed -> same epoch 0; epochs differ
    first.sampler.set_epoch(1)
    assert _epoch_trace(first) == run_a[1]  # resuming at epoch 1 replays it
    other = _epoch_trace(build_loader(ds, 2, shuffle=True, seed=1, drop_last=False))
    assert other != run_a[0]
    assert any(f for _, f in run_a[0] + run_a[1]) and not all(f for _, f in run_a[0] + run_a[1])
    worker = build_loader(ds, 2, shuffle=True, seed=0, drop_last=False, num_workers=1)
    assert _epoch_trace(worker) == run_a[0]  # independent of the number of workers


def test_loader_with_external_sampler_and_drop_last(tiny):
    ds = _dataset(tiny, img_scale=(32, 32), flip_prob=0.5)
    sampler = torch.utils.data.distributed.DistributedSampler(
        ds, num_replicas=2, rank=1, shuffle=True, seed=3
    )
    loader = build_loader(ds, 2, shuffle=False, seed=0, drop_last=True, sampler=sampler)
    assert len(loader) == 1 and len(_epoch_trace(loader)) == 2
    with pytest.raises(ValueError, match="mutually exclusive"):
        EpochSampler(6, shuffle=True, flip_prob=0.5, seed=0, base=sampler)


# ---- bad input: one DataError naming the file and the id -------------------------------------------------


def _base(tmp_path: Path) -> dict:
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "ok.png")
    return {
        "images": [{"id": 11, "file_name": "ok.png", "width": 40, "height": 30}],
        "annotations": [{"id": 21, "image_id": 11, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "a"}],
    }


def _break_image_file(tmp_path, data, file_name, content):
    data["images"].append({"id": 12, "file_name": file_name, "width": 40, "height": 30})
    if content is not None:
        (tmp_path / "img" / file_name).write_bytes(content)
    return data


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:300]


_GETITEM_CASES = {  # name -> (edit, needles); the error comes when the broken image is first read
    "missing_file": (lambda t, d: _break_image_file(t, d, "gone.jpg", None), ["gone.jpg", "12"]),
    "corrupt_file": (lambda t, d: _break_image_file(t, d, "junk.jpg", b"not an image"), ["junk.jpg", "12"]),
    "truncated_jpeg": (lambda t, d: _break_image_file(t, d, "cut.jpg", _truncated_jpeg()), ["cut.jpg", "12"]),
    "size_mismatch": (lambda t, d: d["images"][0].update(width=41) or d, ["ok.png", "11", "41x30"]),
}


@pytest.mark.parametrize("case", sorted(_GETITEM_CASES))
def test_bad_images_raise_data_error_naming_file_and_id(tmp_path, case):
    edit, needles = _GETITEM_CASES[case]
    ann = _write_json(tmp_path / "ann.json", edit(tmp_path, _base(tmp_path)))
    ds = _dataset((tmp_path / "img", ann), img_scale=(64, 48))
    with pytest.raises(DataError) as err:
        [ds[(i, False)] for i in range(len(ds))]
    assert all(n in str(err.value) for n in needles), str(err.value)
    with pytest.raises(DataError):
        _dataset((tmp_path / "img", ann), img_scale=(64, 48), cache_images=True)[(0, False)]


def _drop(record: dict, key: str) -> dict:
    record.pop(key)
    return record


_ANN_CASES = {  # name -> (edit of the parsed JSON, needles besides the file name)
    "unknown_image": (lambda d: d["annotations"][0].update(image_id=99), ["annotation id 21", "99"]),
    "unknown_category": (lambda d: d["annotations"][0].update(category_id=7), ["annotation id 21", "7"]),
    "image_missing_file_name": (lambda d: _drop(d["images"][0], "file_name"), ["image id 11", "file_name"]),
    "annotation_missing_bbox": (lambda d: _drop(d["annotations"][0], "bbox"), ["annotation id 21", "bbox"]),
    "bad_bbox": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ["annotation id 21", "bbox"]),
    "duplicate_annotation": (
        lambda d: d["annotations"].append(dict(d["annotations"][0])),
        ["annotation id 21"],
    ),
    "bad_width": (lambda d: d["images"][0].update(width=0), ["image id 11", "width"]),
    "missing_section": (lambda d: d.pop("categories"), ["categories"]),
}


@pytest.mark.parametrize("case", sorted(_ANN_CASES))
def test_bad_annotation_file_raises_at_construction(tmp_path, case):
    edit, needles = _ANN_CASES[case]
    data = _base(tmp_path)
    edit(data)
    ann = _write_json(tmp_path / "ann_bad.json", data)
    with pytest.raises(DataError) as err:
        _dataset((tmp_path / "img", ann))
    assert all(n in str(err.value) for n in ["ann_bad.json", *needles]), str(err.value)


def test_malformed_or_missing_json_names_file_and_position(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DataError, match=r"broken\.json: malformed JSON at line 2 column 12"):
        _dataset((tmp_path, tmp_path / "broken.json"))
    with pytest.raises(DataError, match=r"absent\.json"):
        _dataset((tmp_path, tmp_path / "absent.json"))
