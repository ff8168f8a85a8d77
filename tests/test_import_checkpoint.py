"""Importing mmdetection / fcjian TOOD and mmdetection ATSS checkpoints (tood/model/mmdet_import.py, the CLI).

The source state dicts carry mmdetection's key names and shapes as tests/mmdet_reference.py spells them
out from mmdet's module structure; the head outputs of the imported detector are compared with a
functional forward of mmdet's heads that reads those mmdet-named tensors directly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from mmdet_reference import (
    as_fcjian,
    atss_head_forward,
    fpn_forward,
    mmdet_checkpoint,
    tood_head_forward,
)
from PIL import Image

from pipeline import import_checkpoint as cli
from pipeline import predict
from pipeline.cli import CliError
from tood.engine.inference import load_detector
from tood.model.detector import Detector
from tood.model.mmdet_import import (
    COCO_CATEGORIES,
    NO_DOWNLOAD_PRETRAINED,
    CheckpointImportError,
    SourceLayout,
    export_state_dict,
    import_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
FEAT, N, GROUPS = 16, 2, 4  # tiny head: F=16 (layer attention 16 // 8 = 2 wide), N=2, GN 4
TOOD_2X_CONFIG = "model = dict(\n    type='TOOD',\n    bbox_head=dict(\n        type='TOODHead',\n        anchor_type='{}',"


@pytest.fixture
def tiny_params(tmp_path) -> Path:
    """A params file for a ResNet-18 / F=16 model; data points at a tiny COCO-80 val set made by _coco80."""
    params = {
        "alpha": 1.0, "beta": 6.0,
        "data": {"dataset": "coco2017", "root": str(tmp_path / "coco"), "val_images": "val2017",
                 "val_ann": "annotations/instances_val2017.json", "img_scale": [64, 64]},
        "model": {"depth": 18, "fpn_channels": FEAT, "stacked_convs": N, "gn_groups": GROUPS, "norm": "frozen_bn"},
        "eval": {"batch_size": 2},
    }  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _tiny(head: str, seed: int = 0) -> dict:
    return mmdet_checkpoint(18, FEAT, head, torch.Generator().manual_seed(seed), n=N)


def _with_config(ckpt: dict, anchor_type: str, key: str = "config") -> dict:
    return {**ckpt, "meta": {key: TOOD_2X_CONFIG.format(anchor_type)}}


def _without_counters(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------------------------------------------
# key coverage, round trip, rejection


@pytest.mark.parametrize("head", ["tood", "parallel"])
def test_r50_256_checkpoint_fills_exactly_our_coco_model(head):
    """At the real shapes (ResNet-50, 256 channels, N=6, 80 classes, profiles/coco.yaml) the mmdet key set
    maps one-to-one onto our model: every tensor used, every one of ours filled, all shapes equal."""
    src = mmdet_checkpoint(50, 256, head, torch.Generator().manual_seed(0))
    src = _with_config(src, "anchor_free") if head == "tood" else src
    ckpt = import_checkpoint(src, REPO / "profiles" / "coco.yaml")
    detector = Detector(load_detector(ckpt, torch.device("cpu"))[1].model, 80)
    ours = detector.state_dict()
    assert set(ckpt["model"]) == set(ours)
    assert all(ckpt["model"][k].shape == v.shape for k, v in ours.items())
    weights = _without_counters(src["state_dict"])  # FrozenBatchNorm2d keeps no step counters
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in ours.values())
    layout = SourceLayout(head, "mmdet")
    exported = export_state_dict(ckpt["model"], layout)
    assert exported.keys() == weights.keys()
    assert all(torch.equal(exported[k], weights[k].float()) for k in weights)


@pytest.mark.parametrize("head", ["tood", "parallel"])
def test_round_trip_through_a_saved_checkpoint(head, tiny_params, tmp_path):
    """mmdet state dict -> DST on disk -> load_detector (offline) -> mmdet names again: bitwise equal."""
    src = _with_config(_tiny(head), "anchor_free") if head == "tood" else _tiny(head)
    torch.save(import_checkpoint(src, tiny_params), tmp_path / "dst.pt")
    ckpt = torch.load(tmp_path / "dst.pt", weights_only=True)
    detector, cfg = load_detector(ckpt, torch.device("cpu"))
    back = export_state_dict(detector.state_dict(), SourceLayout(head, "mmdet"))
    expected = _without_counters(src["state_dict"])
    assert back.keys() == expected.keys() and all(torch.equal(back[k], expected[k]) for k in expected)
    assert cfg.model.pretrained == NO_DOWNLOAD_PRETRAINED and cfg.model.head == head


def test_plain_batchnorm_target_takes_the_step_counters_too(tiny_params):
    params = yaml.safe_load(tiny_params.read_text())
    params["model"]["norm"] = "bn"
    tiny_params.write_text(yaml.safe_dump(params))
    src = _with_config(_tiny("tood"), "anchor_free")
    ckpt = import_checkpoint(src, tiny_params)
    assert int(ckpt["model"]["backbone.body.stem.1.num_batches_tracked"]) == 1000


def test_fcjian_names_import_to_the_same_model(tiny_params):
    src = _with_config(_tiny("tood"), "anchor_based")
    mmdet = import_checkpoint(src, tiny_params)["model"]
    fcjian = import_checkpoint({**src, "state_dict": as_fcjian(src["state_dict"])}, tiny_params)["model"]
    assert "bbox_head.cls_decomp.la_conv1.weight" in as_fcjian(src["state_dict"])
    assert mmdet.keys() == fcjian.keys() and all(torch.equal(mmdet[k], fcjian[k]) for k in mmdet)


def test_cli_rejects_a_renamed_key_and_names_it(tiny_params, tmp_path, capsys):
    src = _with_config(_tiny("tood"), "anchor_free")
    sd = src["state_dict"]
    sd["bbox_head.tood_clss.weight"] = sd.pop("bbox_head.tood_cls.weight")
    torch.save(src, tmp_path / "src.pth")
    with pytest.raises(CliError) as err:  # pipeline.cli.run makes it one line with exit status 2
        cli.main([str(tmp_path / "src.pth"), str(tmp_path / "dst.pt"), "--params", str(tiny_params)])
    assert str(err.value).startswith(f"{tmp_path / 'src.pth'}: ")
    assert "no place in our model: bbox_head.tood_clss.weight" in str(err.value)
    assert "missing from the source: bbox_head.tood_cls.weight" in str(err.value)
    assert not (tmp_path / "dst.pt").exists()


def test_shape_mismatch_and_unknown_heads_are_named(tiny_params):
    src = _with_config(_tiny("tood"), "anchor_free")
    src["state_dict"]["bbox_head.tood_reg.weight"] = torch.zeros(4, FEAT, 1, 1)
    with pytest.raises(
        CheckpointImportError, match=r"bbox_head.tood_reg.weight \(4, 16, 1, 1\) vs ours \(4, 16, 3, 3\)"
    ):
        import_checkpoint(src, tiny_params)
    retina = {"state_dict": {"bbox_head.retina_cls.weight": torch.zeros(1)}, "meta": {}}
    with pytest.raises(CheckpointImportError, match=r"not a TOOD or ATSS checkpoint.*\['retina_cls'\]"):
        import_checkpoint(retina, tiny_params)


def test_non_coco_class_names_are_refused(tiny_params):
    src = _with_config(_tiny("tood"), "anchor_free")
    src["meta"]["CLASSES"] = ["person", "bike", *[n for _, n in COCO_CATEGORIES[2:]]]
    with pytest.raises(CheckpointImportError, match="class 1 is 'bike' where COCO's is 'bicycle'"):
        import_checkpoint(src, tiny_params)
    src["meta"]["CLASSES"] = [n.replace(" ", "_") for _, n in COCO_CATEGORIES]  # mmdet 1.x spelling
    assert import_checkpoint(src, tiny_params)["class_names"][9] == "traffic light"


# ---------------------------------------------------------------------------------------------------
# anchor type


@pytest.mark.parametrize(
    ("meta", "flag", "expected"),
    [
        ({"cfg": TOOD_2X_CONFIG.format("anchor_based")}, None, "based"),  # mmdet 3.x
        ({"config": TOOD_2X_CONFIG.format("anchor_based")}, None, "based"),  # mmdet 2.x, fcjian
        ({"config": "model = dict(bbox_head=dict(type='TOODHead'))"}, None, "free"),  # TOODHead default
        ({"config": "bbox_head = {'anchor_type': 'anchor_based'}"}, "based", "based"),
        ({}, "based", "based"),
        ({}, "free", "free"),
    ],
)
def test_anchor_type_comes_from_the_source_config_or_the_flag(meta, flag, expected, tiny_params):
    ckpt = import_checkpoint({**_tiny("tood"), "meta": meta}, tiny_params, anchor=flag)
    assert ckpt["config"]["model"]["anchor"] == expected
    assert ckpt["config"]["variant"] == {"free": "tood", "based": "ab_tood"}[expected]


@pytest.mark.parametrize(
    ("head", "meta", "flag", "message"),
    [
        ("tood", {}, None, "pass --anchor free|based"),
        ("tood", {"cfg": TOOD_2X_CONFIG.format("anchor_free")}, "based", "contradicts the source config"),
        ("parallel", {}, "free", "ATSS head is anchor-based"),
    ],
)
def test_missing_or_contradicting_anchor_type_is_an_error(head, meta, flag, message, tiny_params):
    with pytest.raises(CheckpointImportError, match=message):
        import_checkpoint({**_tiny(head), "meta": meta}, tiny_params, anchor=flag)


def test_atss_checkpoint_becomes_the_anchor_based_parallel_atss_cell(tiny_params):
    cfg = import_checkpoint(_tiny("parallel"), tiny_params)["config"]
    assert (cfg["variant"], cfg["model"]["head"], cfg["model"]["anchor"]) == (
        "ab_parallel_atss",
        "parallel",
        "based",
    )
    assert cfg["assign"]["assigner"] == "atss"  # scores x centerness (inference.uses_centerness)


# ---------------------------------------------------------------------------------------------------
# same outputs as mmdetection's forward on the same input


def _features(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, FEAT, s, s + 1, generator=gen) for s in (8, 4, 2, 1, 1)]  # P3-P7 of a 64x72 input


@pytest.mark.parametrize("anchor", ["free", "based"])
def test_imported_t_head_matches_the_mmdet_forward(anchor, tiny_params):
    src = _with_config(_tiny("tood", seed=1), f"anchor_{anchor}")
    detector, _ = load_detector(import_checkpoint(src, tiny_params), torch.device("cpu"))
    feats = _features(2)
    with torch.no_grad():
        ours = detector.head(feats, detector.priors_for(feats))
        scores, boxes = tood_head_forward(feats, src["state_dict"], N, GROUPS, f"anchor_{anchor}")
    assert ours.scores.shape == scores.shape == (2, 8 * 9 + 4 * 5 + 2 * 3 + 2 + 2, 80)
    torch.testing.assert_close(ours.scores, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.boxes, boxes, rtol=1e-5, atol=1e-3)
    assert (boxes[..., 2:] - boxes[..., :2]).std() > 1  # boxes really vary (offsets, scales, anchors)


def test_imported_atss_head_matches_the_mmdet_forward(tiny_params):
    src = _tiny("parallel", seed=3)
    detector, _ = load_detector(import_checkpoint(src, tiny_params), torch.device("cpu"))
    feats = _features(4)
    with torch.no_grad():
        ours = detector.head(feats, detector.priors_for(feats))
        scores, boxes, centerness = atss_head_forward(feats, src["state_dict"], GROUPS)
    torch.testing.assert_close(ours.scores, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.boxes, boxes, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.centerness, centerness, rtol=1e-5, atol=1e-5)


def test_imported_backbone_and_fpn_match_torchvision_resnet_and_the_mmdet_fpn(tiny_params):
    """mmdet's ResNet keys are torchvision's (prefixed backbone.): load them into torchvision's ResNet-18,
    feed its C3-C5 to the functional mmdet FPN, compare with our imported backbone."""
    src = _with_config(_tiny("tood", seed=5), "anchor_free")
    detector, _ = load_detector(import_checkpoint(src, tiny_params), torch.device("cpu"))
    resnet = torchvision.models.resnet18(weights=None).eval()
    sd = {k.removeprefix("backbone."): v for k, v in src["state_dict"].items() if k.startswith("backbone.")}
    assert set(resnet.load_state_dict(sd, strict=False).missing_keys) == {"fc.weight", "fc.bias"}
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
        c2 = resnet.layer1(x)
        c3 = resnet.layer2(c2)
        c4 = resnet.layer3(c3)
        reference = fpn_forward([c3, c4, resnet.layer4(c4)], src["state_dict"])
        ours = detector.backbone(images)
    for level, (a, b) in enumerate(zip(ours, reference)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"P{level + 3}")


# ---------------------------------------------------------------------------------------------------
# the CLI end to end: import, predict, evaluate


def _coco80(root: Path, count: int = 2, size: int = 64) -> None:
    """root/val2017/*.png + annotations/instances_val2017.json with COCO's 80 categories."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(count):
        Image.new("RGB", (size, size), (40 * i, 90, 160)).save(root / "val2017" / f"{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": size, "height": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 18, "bbox": [8, 8, 30, 20], "area": 600,
                     "iscrowd": 0})  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in COCO_CATEGORIES]
    payload = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(payload))


def test_cli_import_then_predict_and_evaluate(tiny_params, tmp_path, capsys):
    _coco80(tmp_path / "coco")
    torch.save(_with_config(_tiny("tood", seed=7), "anchor_based", key="cfg"), tmp_path / "tood.pth")
    argv = [str(tmp_path / "tood.pth"), str(tmp_path / "dst.pt"), "--params", str(tiny_params)]
    assert cli.main([*argv, "--evaluate", str(tmp_path / "metrics.json")]) == 0
    assert "mmdetection 3.x tood head, anchor-based (source config)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["epochs"] == 12 and -1 <= metrics["AP"] <= 1
    ckpt = torch.load(tmp_path / "dst.pt", weights_only=True)
    assert ckpt["cat_ids"] == [c for c, _ in COCO_CATEGORIES] and ckpt["class_names"][16] == "dog"
    out = tmp_path / "pred"
    pred_argv = ["--checkpoint", str(tmp_path / "dst.pt"), "--images", str(tmp_path / "coco" / "val2017")]
    assert predict.main([*pred_argv, "--out", str(out), "--score-thr", "0"]) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert detections and {d["category_name"] for d in detections} <= {n for _, n in COCO_CATEGORIES}


@pytest.mark.parametrize("flags", [[], ["--allow-pickle"]])
def test_a_file_that_is_no_checkpoint_is_one_line_with_exit_2(flags, tmp_path):
    """Issue 18: a text file gave the path twice, advice to pass --allow-pickle, and the same advice again
    with --allow-pickle (`invalid load key, 'n'`), with exit status 1 unlike every other CLI."""
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("not a checkpoint\n")
    cmd = [sys.executable, "-m", "pipeline.import_checkpoint", str(bogus), str(tmp_path / "out.pt"), *flags]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"pipeline.import_checkpoint: error: {bogus}: not a PyTorch checkpoint"), lines
    assert lines[0].count(str(bogus)) == 1 and "pickle" not in lines[0].replace("a pickle before", "")
    assert not (tmp_path / "out.pt").exists()


def test_a_pickled_object_still_gets_the_allow_pickle_advice(tmp_path):
    src = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "meta": argparse.Namespace(epoch=12)}, src)  # mmdet 2.x saves such meta
    with pytest.raises(
        CliError, match=r"weights-only load refuses \(.*argparse.Namespace.*pass --allow-pickle"
    ):
        cli.main([str(src), str(tmp_path / "out.pt")])
