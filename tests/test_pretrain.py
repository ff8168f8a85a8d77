"""The `pretrain` stage: shape crops, the classifier recipe, the checkpoint the detector loads."""

import json
import math

import numpy as np
import pytest
import torch
import torchvision

from pipeline.pretrain_backbone import main as pretrain_main
from tood.config import PretrainConfig
from tood.data.shapes import KINDS, render_crop, render_image
from tood.engine.pretrain import backbone_state_dict, build_classifier, lr_at, make_crops, train_classifier

TINY = PretrainConfig(num_train=64, num_val=32, crop_size=32, epochs=2, batch_size=16, warmup_iters=2)
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def test_crops_are_deterministic_and_labelled_over_all_kinds():
    a, label_a = render_crop(5, 3, 48, 12)
    b, label_b = render_crop(5, 3, 48, 12)
    assert np.array_equal(a, b) and label_a == label_b and a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, render_crop(6, 3, 48, 12)[0])  # another seed, another crop
    labels = {render_crop(0, i, 32, 12)[1] for i in range(200)}
    assert labels == set(range(12))
    assert {render_crop(0, i, 32, 3)[1] for i in range(50)} <= {0, 1, 2}


def test_crops_never_reuse_a_detection_image_stream():
    """Crop i of seed s and detection image i of split train/val with the same seed share no pixels' RNG."""
    from tood.config import ShapesConfig

    crop, _ = render_crop(0, 0, 64, 12)
    image, _, _ = render_image(ShapesConfig(seed=0, image_size=64), "train", 0)
    assert not np.array_equal(crop, image)


def test_make_crops_splits_are_disjoint_index_ranges():
    train, val = make_crops(TINY, "train", 90), make_crops(TINY, "val", 90)
    assert train.images.shape == (64, 3, 32, 32) and val.images.shape == (32, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.long
    assert int(train.labels.max()) < TINY.num_classes
    first_val = torch.from_numpy(render_crop(TINY.seed, TINY.num_train, 32, TINY.num_classes)[0])
    # JPEG round trip: close to the rendered crop, not equal
    assert (val.images[0].permute(1, 2, 0).float() - first_val.float()).abs().mean() < 8


def test_lr_warms_up_linearly_then_decays_by_cosine():
    cfg = PretrainConfig(lr=0.1, warmup_iters=10)
    assert lr_at(0, 110, cfg) == pytest.approx(0.01)
    assert lr_at(9, 110, cfg) == pytest.approx(0.1)
    assert lr_at(10, 110, cfg) == pytest.approx(0.1)
    assert lr_at(60, 110, cfg) == pytest.approx(0.05)  # half way through the cosine
    assert lr_at(110, 110, cfg) == pytest.approx(0.0, abs=1e-12)


def test_backbone_state_dict_is_exactly_the_resnet_body():
    classifier = build_classifier(18, 12)
    body = backbone_state_dict(classifier)
    reference = torchvision.models.resnet18().state_dict()
    assert set(body) == {k for k in reference if not k.startswith("fc.")}
    assert all(body[k].shape == reference[k].shape for k in body)


def test_train_classifier_runs_and_reports_accuracy():
    train, val = make_crops(TINY, "train", 90), make_crops(TINY, "val", 90)
    logged = []
    _, summary = train_classifier(
        TINY, 18, train, val, mean=MEAN, std=STD, amp=None, channels_last=False,
        log=lambda step, m: logged.append((step, m)),
    )  # fmt: skip
    assert summary["steps"] == TINY.epochs * (TINY.num_train // TINY.batch_size) == 8
    assert 0.0 <= summary["top1_val"] <= 1.0 and math.isfinite(summary["final_loss"])
    assert summary["chance"] == pytest.approx(1 / 12)
    assert [m["pretrain/epoch"] for _, m in logged if "pretrain/epoch" in m] == [1, 2]


def test_cli_trains_saves_and_logs_its_own_mlflow_run(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = {
        "alpha": 1.0, "beta": 6.0, "pretrain": {**vars(TINY)},
        "model": {"depth": 18, "pretrained": "runs/pretrain/backbone.pt", "norm": "frozen_bn"},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, metrics = tmp_path / "runs" / "pretrain" / "backbone.pt", tmp_path / "pretrain.json"
    assert (
        pretrain_main(
            ["--params", str(tmp_path / "params.yaml"), "--out", str(out), "--metrics", str(metrics)]
        )
        == 0
    )
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["depth"] == 18 and ckpt["class_names"] == [k.name for k in KINDS]
    report = json.loads(metrics.read_text())
    assert report == {k: ckpt["summary"][k] for k in ("top1_val", "top1_train")}  # issue 18: 2 DVC columns
    import mlflow

    runs = mlflow.search_runs(experiment_names=["tood-pretrain"])  # its own experiment (issue 18) ...
    assert list(runs["tags.variant"]) == ["pretrain"]
    assert mlflow.get_experiment_by_name("tood-ablations") is None  # ... not a row of the detection runs
    assert runs["metrics.top1_val"].iloc[0] == pytest.approx(report["top1_val"])
    # issue 16: what it was measured on is part of the result (in MLflow; pretrain.json is 2 DVC columns)
    assert runs["tags.precision"].iloc[0] in ("fp32", "bf16") and runs["tags.device"].iloc[0]


def test_cli_does_not_train_when_the_profile_uses_imagenet(tmp_path):
    import yaml

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"alpha": 1.0, "beta": 6.0, "model": {"pretrained": "imagenet"}})
    )
    out, metrics = tmp_path / "backbone.pt", tmp_path / "pretrain.json"
    assert (
        pretrain_main(
            ["--params", str(tmp_path / "params.yaml"), "--out", str(out), "--metrics", str(metrics)]
        )
        == 0
    )
    assert json.loads(metrics.read_text()) == {"top1_val": None, "top1_train": None}  # not trained
    assert "imagenet" in torch.load(out, weights_only=True)["unused"]
