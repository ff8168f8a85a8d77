"""Evaluation runner and the train / evaluate / predict CLIs, end to end on a tiny generated COCO set.

One run of `pipeline.train_variant` (parallel head, ATSS, anchor-based: the centerness test-score path)
is shared by the tests; its MLflow store is a private sqlite file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest
import torch
import yaml
from PIL import Image
from test_train import make_tiny_coco  # the tiny COCO generator of the training tests

from pipeline import evaluate_variant, predict, train_variant
from tood.config import AssignConfig, LossConfig, load_run_config
from tood.data.dataset import build_dataset, build_loader
from tood.engine.evaluate import ALIGN_KEYS, COCO_KEYS, summarize_alignment
from tood.engine.inference import evaluate_checkpoint, load_detector, run_inference, uses_centerness

VARIANT = "tiny_atss"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """params.yaml + one finished 1-epoch run of VARIANT through the train CLI: (root, params path)."""
    root = tmp_path_factory.mktemp("inference")
    make_tiny_coco(root / "data")
    params = {
        "alpha": 1.0, "beta": 6.0, "seeds": [0],
        "data": {"root": str(root / "data"), "img_scale": [64, 64]},
        "model": {"depth": 18, "fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
        "assign": {"warmup_epochs": 1},
        "optim": {"warmup_iters": 3},
        "train": {"epochs": 1, "batch_size": 2, "log_every": 1, "num_threads": 1},
        "eval": {"batch_size": 2},
        "variants": {VARIANT: {"head": "parallel", "assigner": "atss", "anchor": "based"}},
    }  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("DVC_ROOT", str(root))
        args = [
            "--params",
            str(root / "params.yaml"),
            "--variant",
            VARIANT,
            "--out",
            str(root / "runs" / VARIANT),
        ]
        assert train_variant.main([*args, "--curves", str(root / "curves" / f"{VARIANT}.csv")]) == 0
        yield root, root / "params.yaml"
    torch.set_num_threads(threads)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_centerness_multiplies_test_scores_only_after_an_atss_final_epoch():
    assert uses_centerness(AssignConfig(assigner="atss"), LossConfig(), epochs=12)
    assert not uses_centerness(AssignConfig(assigner="tal", warmup_epochs=4), LossConfig(), epochs=12)
    assert uses_centerness(
        AssignConfig(assigner="tal", warmup_epochs=4), LossConfig(), epochs=4
    )  # in warm-up
    # issue 20: FCOS trains and uses its centerness; max-IoU, FoveaBox and GFL (IoU-target scores) do not
    assert uses_centerness(AssignConfig(assigner="fcos"), LossConfig(), epochs=12)
    for assigner in ("max_iou", "fovea"):
        assert not uses_centerness(AssignConfig(assigner=assigner), LossConfig(), epochs=12)
    assert not uses_centerness(AssignConfig(assigner="atss"), LossConfig(cls_target="iou"), epochs=12)


def test_train_cli_writes_run_folder_and_mean_curve(trained):
    root, _ = trained
    run_dir = root / "runs" / VARIANT / "seed0"
    for name in ("last.pt", "config.json", "mlflow_run.json", "losses.csv"):
        assert (run_dir / name).is_file(), name
    with (root / "curves" / f"{VARIANT}.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "loss_cls", "loss_box", "loss_ctr"]
    assert [r["step"] for r in rows] == ["1", "2"]


def _trained_detector_and_val(trained, batch_size: int):
    """The fixture's trained detector, its config, the val dataset and a loader over it."""
    root, params = trained
    cfg = load_run_config(params, VARIANT)
    ckpt = torch.load(root / "runs" / VARIANT / "seed0" / "last.pt", weights_only=True)
    detector, _ = load_detector(ckpt, torch.device("cpu"))
    dataset = build_dataset(cfg, None, train=False)
    return detector, cfg, dataset, build_loader(dataset, batch_size, shuffle=False, seed=0, drop_last=False)


def test_run_inference_returns_coco_results_and_per_image_stats(trained):
    detector, cfg, dataset, loader = _trained_detector_and_val(trained, batch_size=2)
    eval_cfg = dataclasses.replace(cfg.eval, score_thr=0.0, max_per_img=7)
    results, stats = run_inference(detector, loader, eval_cfg, True, dataset.cat_ids, progress=False)
    assert len(stats) == len(dataset) == 2 and 0 < len(results) <= 2 * 7
    for r in results:
        x, y, w, h = r["bbox"]
        assert r["image_id"] in dataset.image_ids and r["category_id"] in (1, 3, 7)
        assert 0 <= x and 0 <= y and x + w <= 64 + 1e-3 and y + h <= 64 + 1e-3 and 0 <= r["score"] <= 1
    assert set(summarize_alignment(stats)) == set(ALIGN_KEYS)
    assert sum(s["instances"] for s in stats) == len(dataset.coco.getAnnIds())


def test_evaluate_cli_writes_metrics_schema_and_logs_into_the_training_run(trained):
    root, params = trained
    out = root / "reports" / "metrics" / f"{VARIANT}.json"
    argv = [
        "--params",
        str(params),
        "--variant",
        VARIANT,
        "--runs",
        str(root / "runs" / VARIANT),
        "--out",
        str(out),
        "--means",
        str(root / "reports" / "means" / f"{VARIANT}.json"),
    ]
    assert evaluate_variant.main(argv) == 0
    metrics = json.loads(out.read_text())
    # what `dvc metrics show` shows (issue 18): the means on the 0-100 scale and the seed count, nothing else;
    # COCO's -1 (no large object at 64 px) is null, shown as '-'
    means = json.loads((root / "reports" / "means" / f"{VARIANT}.json").read_text())
    assert set(means) == {*evaluate_variant.DVC_MEANS, "seeds"} and means["seeds"] == 1
    assert means["AP"] == round(100 * metrics["AP"], 2) and means["APl"] is None
    assert metrics["ap_per_seed"] == [{"seed": 0, "AP": means["AP"]}]  # the list `dvc plots show` draws
    run_id = json.loads((root / "runs" / VARIANT / "seed0" / "mlflow_run.json").read_text())["run_id"]
    assert metrics["variant"] == VARIANT and set(metrics["seeds"]) == {"0"}
    for key in (*COCO_KEYS, *ALIGN_KEYS):
        assert key in metrics and key in metrics["std"] and key in metrics["seeds"]["0"], key
        assert metrics["std"][key] in (0.0, None)  # one seed
    assert metrics["seeds"]["0"]["mlflow_run_id"] == run_id
    assert set(metrics["seeds"]["0"]["per_class"]) == {"red", "green", "blue"}
    seed0 = metrics["seeds"]["0"]  # issue 16: the budget curve and what the result was measured on
    assert seed0["curve"]["step"] == [2] and seed0["curve"]["epoch"] == [1]  # 1 epoch of 2 steps: its end
    assert seed0["curve"]["AP"] == [seed0["AP"]]  # the final point is the evaluate stage's AP (same images)
    assert seed0["precision"] in ("fp32", "bf16") and seed0["device"] and seed0["eval_device"]
    assert seed0["train_time_s"] > 0 and seed0["curve_time_s"] > 0  # the run's epochs and its one point
    assert metrics["setting"] == {
        "dataset": "shapes", "depth": 18, "img_scale": [64, 64], "epochs": 1, "head": "parallel",
        "assigner": "atss", "anchor": "based", "alpha": 1.0, "beta": 6.0,
        "topk": 13, "tap": False, "cls_target": "hard",  # issue 20's switches
    }  # fmt: skip
    client = _client()  # the fixture's private store
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "AP" in run.data.metrics and "per_class/red" in run.data.metrics
    # the model's size is a tag, not a one-point chart before the curves (issue 29)
    assert not any(key.startswith("complexity") for key in run.data.metrics)
    complexity = metrics["complexity"]
    assert run.data.tags["complexity.run.head_params"] == str(complexity["run"]["head_params"])
    assert run.data.tags["complexity.paper_config.gflops"] == repr(complexity["paper_config"]["gflops"])
    assert "metrics_seed0.json" in [a.path for a in client.list_artifacts(run_id)]


def test_evaluate_checkpoint_refuses_an_unfinished_run(trained, tmp_path):
    root, params = trained
    ckpt = torch.load(root / "runs" / VARIANT / "seed0" / "last.pt", weights_only=True)
    torch.save({**ckpt, "summary": None, "epoch": 0}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="not finished"):
        evaluate_checkpoint(load_run_config(params, VARIANT), tmp_path / "last.pt")


def test_predict_cli_draws_boxes_and_writes_coco_json(trained, tmp_path):
    root, _ = trained
    images = tmp_path / "images"
    shutil.copytree(root / "data" / "val", images)
    ckpt = root / "runs" / VARIANT / "seed0" / "last.pt"
    argv = [
        "--checkpoint",
        str(ckpt),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "pred"),
        "--score-thr",
        "0",
    ]
    assert predict.main(argv) == 0
    files = sorted(p.name for p in images.iterdir())
    for name in files:
        with Image.open(tmp_path / "pred" / name) as drawn, Image.open(images / name) as src:
            assert drawn.size == src.size
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert detections, "score threshold 0 keeps every post-processed box"
    for d in detections:
        assert files[d["image_id"]] == d["file_name"] and d["category_name"] in ("red", "green", "blue")
        assert set(d) >= {"bbox", "score", "category_id"}


def test_evaluation_reports_progress_with_an_eta_in_a_log(trained, monkeypatch, capsys):
    from tood import progress

    detector, cfg, dataset, loader = _trained_detector_and_val(trained, batch_size=1)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line per batch instead of one per 30 s
    capsys.readouterr()
    run_inference(detector, loader, cfg.eval, True, dataset.cat_ids)
    err = capsys.readouterr().err
    assert "\r" not in err and err.startswith("eval: 1/2 batches (50%), "), err
    assert "ETA" in err.splitlines()[0]
