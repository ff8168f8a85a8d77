"""Training loop: lr schedule, RNG/checkpoint round trip, kill-and-resume == uninterrupted, NaN stop, MLflow.

Every run trains a tiny detector (ResNet-18, FPN width 16, 2 head convs) on 4 generated 64x64 images,
batch 2, 2 epochs, with a 1-epoch ATSS warm-up so both assignment phases run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tood.engine.checkpoint
import tood.engine.loop
from tood.config import AssignConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from tood.engine.checkpoint import RUN_FILES, rng_state, set_rng_state
from tood.engine.loop import TrainingDiverged, lr_at, scaled_lr
from tood.engine.train import train, train_published
from tood.model.detector import Detector

CATEGORIES = [
    {"id": 1, "name": "red"},
    {"id": 3, "name": "green"},
    {"id": 7, "name": "blue"},
]  # ids with gaps
COLOURS = {1: (220, 30, 30), 3: (30, 200, 30), 7: (30, 30, 220)}


def make_tiny_coco(root: Path, num_train: int = 4, num_val: int = 2, size: int = 64, seed: int = 0) -> Path:
    """root/{train,val}/*.png with 1-3 filled rectangles each, and root/annotations/instances_*.json."""
    rng = random.Random(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(count):
            image = Image.new("RGB", (size, size), (128, 128, 128))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randint(1, 3)):
                w, h, cat = rng.randint(10, 40), rng.randint(10, 40), rng.choice(list(COLOURS))
                x, y = rng.randint(0, size - w), rng.randint(0, size - h)
                draw.rectangle((x, y, x + w - 1, y + h - 1), fill=COLOURS[cat])
                anns.append(
                    {"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0}
                )  # fmt: skip
            image.save(root / split / f"{i:04d}.png")
            images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": size, "height": size})
        coco = {"images": images, "annotations": anns, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def tiny_config(data_root: Path, **train) -> RunConfig:
    return RunConfig(
        variant="tiny",
        data=DataConfig(root=str(data_root), img_scale=(64, 64)),
        model=ModelConfig(depth=18, fpn_channels=16, stacked_convs=2, gn_groups=4),
        assign=AssignConfig(warmup_epochs=1),
        optim=OptimConfig(warmup_iters=3),
        # amp fp32: the default `auto` is bf16 on some CPUs, and these runs must not depend on the machine
        train=TrainConfig(
            **{"epochs": 2, "batch_size": 2, "log_every": 1, "num_threads": 1, "amp": "fp32", **train}
        ),
        eval=EvalConfig(batch_size=2),
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny dataset and a private MLflow sqlite store (never the repo's).

    The runs use one intra-op thread (train.num_threads=1): on 2 shared cores, OpenMP threads spinning
    at barriers made steps 10x slower. The process-wide thread count is restored afterwards.
    """
    root = tmp_path_factory.mktemp("train")
    make_tiny_coco(root / "data")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("DVC_ROOT", str(root))
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(env):
    """One uninterrupted 2-epoch run: (cfg, out_dir, summary)."""
    cfg = tiny_config(env / "data")
    out = env / "uninterrupted"
    return cfg, out, train(cfg, 0, out)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_lr_schedule_known_values():
    kw = {"base_lr": 0.01, "warmup_iters": 500, "warmup_ratio": 0.001, "steps": (8, 11), "gamma": 0.1}
    assert lr_at(0, 0, **kw) == pytest.approx(1e-5)  # warm-up starts at ratio * lr
    assert lr_at(250, 0, **kw) == pytest.approx(0.01 * (1 - 0.5 * 0.999))  # linear in between
    assert lr_at(500, 0, **kw) == pytest.approx(0.01)  # warm-up over
    assert lr_at(10_000, 7, **kw) == pytest.approx(0.01)
    assert lr_at(10_000, 8, **kw) == pytest.approx(1e-3)  # x0.1 from (0-based) epoch 8
    assert lr_at(10_000, 11, **kw) == pytest.approx(1e-4)  # and again from epoch 11
    assert lr_at(0, 8, **kw) == pytest.approx(1e-6)  # warm-up scales the decayed lr (mmcv)
    assert lr_at(5, 3, **{**kw, "warmup_iters": 0}) == pytest.approx(0.01)
    assert scaled_lr(OptimConfig(), 16) == pytest.approx(0.01)  # reference: 0.01 at batch 16
    assert scaled_lr(OptimConfig(), 32) == pytest.approx(0.02)
    assert scaled_lr(OptimConfig(), 2) == pytest.approx(0.00125)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    tood.engine.checkpoint.save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not (tmp_path / "rng.pt.tmp").exists()


def test_finished_run_writes_outputs_and_a_rerun_is_a_no_op(finished):
    cfg, out, summary = finished
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["cat_ids"]) == (2, 4, [1, 3, 7])
    assert ckpt["class_names"] == ["red", "green", "blue"] and ckpt["summary"] == summary
    assert RunConfig.load(out / "config.json") == cfg and ckpt["config"] == cfg.to_dict()
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == summary["mlflow_run_id"]
    rows = _read_csv(out / "losses.csv")
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "loss_cls", "loss_box"]
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert [float(r["lr"]) for r in rows] == pytest.approx([1.25e-6, 0.00125 * (1 - 2 / 3 * 0.999), 0.00125 * (1 - 1 / 3 * 0.999), 0.00125])  # fmt: skip
    assert math.isfinite(summary["final_loss"]) and summary["iterations"] == 4
    experiment = _client().get_experiment_by_name("tood-ablations")
    runs_before = len(_client().search_runs([experiment.experiment_id]))
    mtime = (out / "last.pt").stat().st_mtime_ns
    assert train(cfg, 0, out) == summary  # finished: returns the stored summary
    assert (out / "last.pt").stat().st_mtime_ns == mtime
    assert len(_client().search_runs([experiment.experiment_id])) == runs_before


def test_mlflow_run_has_params_tags_metrics_and_config(finished):
    _, _, summary = finished
    client = _client()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["head"] == "tood" and run.data.params["seed"] == "0"
    assert run.info.run_name == "tiny a1 b6 / seed0"
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["train.batch_size"] == "2"
    assert run.data.params["train.amp_resolved"] == "fp32"  # the precision `train.amp` resolved to
    assert run.data.tags["variant"] == "tiny" and run.data.tags["seed"] == "0"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/loss")] == [1, 2]
    for key in (
        "train/lr",
        "train/images_per_s",
        "train/loss_cls",
        "train/loss_box",
        "train_time_s",
        "images_per_s",
    ):
        assert key in run.data.metrics, key
    assert "config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


class Killed(Exception):
    """Stands in for SIGKILL in the middle of an epoch."""


def test_killed_and_resumed_run_equals_uninterrupted(finished, env, monkeypatch):
    cfg, out_a, summary_a = finished
    out_b = env / "killed"
    real_step = tood.engine.loop.train_step

    def dies_in_epoch_two(state, *args, **kwargs):
        if state.iteration == 3:  # second step of epoch 1 (0-based), after the epoch-1 checkpoint
            raise Killed
        return real_step(state, *args, **kwargs)

    monkeypatch.setattr(tood.engine.loop, "train_step", dies_in_epoch_two)
    with pytest.raises(Killed):
        train(cfg, 0, out_b)
    assert torch.load(out_b / "last.pt", weights_only=True)["epoch"] == 1
    assert len(_read_csv(out_b / "losses.csv")) == 3  # a row of the killed epoch is on disk
    run_id = json.loads((out_b / "mlflow_run.json").read_text())["run_id"]
    assert _client().get_run(run_id).info.status == "FAILED"

    monkeypatch.setattr(tood.engine.loop, "train_step", real_step)
    summary_b = train(cfg, 0, out_b)
    assert summary_b["final_loss"] == summary_a["final_loss"]  # bit-identical, not approx
    assert summary_b["mlflow_run_id"] == run_id and _client().get_run(run_id).info.status == "FINISHED"
    rows_a, rows_b = _read_csv(out_a / "losses.csv"), _read_csv(out_b / "losses.csv")
    assert rows_b == rows_a  # the killed epoch's rows were replaced, not duplicated
    for key in ("train/loss", "train/lr", "epoch/loss", "train_time_s"):  # step 3 was logged before the kill
        steps_a = sorted(m.step for m in _client().get_metric_history(summary_a["mlflow_run_id"], key))
        assert sorted(m.step for m in _client().get_metric_history(run_id, key)) == steps_a, key
    ckpt_a = torch.load(out_a / "last.pt", weights_only=True)
    ckpt_b = torch.load(out_b / "last.pt", weights_only=True)
    for name, tensor in ckpt_a["model"].items():
        assert torch.equal(tensor, ckpt_b["model"][name]), name
    for key, buf in ckpt_a["optimizer"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], ckpt_b["optimizer"]["state"][key]["momentum_buffer"])


def test_dvc_flow_resumes_from_the_keyed_folder_and_finds_finished_runs_again(finished, env, monkeypatch):
    """As under DVC: the stage's output (`out`) is deleted before every re-run of the stage; the run
    resumes from its folder under the work root and is published into `out` once finished."""
    cfg, _, summary_a = finished
    work_root, out = env / "work", env / "published"
    real_step = tood.engine.loop.train_step

    def dies_in_epoch_two(state, *args, **kwargs):
        if state.iteration == 3:
            raise Killed
        return real_step(state, *args, **kwargs)

    monkeypatch.setattr(tood.engine.loop, "train_step", dies_in_epoch_two)
    with pytest.raises(Killed):
        train_published(cfg, 0, out, work_root)
    assert not out.exists()  # an unfinished run is never published
    (work_dir,) = work_root.iterdir()
    assert work_dir == tood.engine.checkpoint.work_dir_for(work_root, cfg, 0)

    monkeypatch.setattr(tood.engine.loop, "train_step", real_step)
    summary = train_published(cfg, 0, out, work_root)
    assert summary["final_loss"] == summary_a["final_loss"]  # resumed bit-identically
    assert summary["checkpoint"] == str(out / "last.pt")
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    assert (out / "last.pt").stat().st_ino == (work_dir / "last.pt").stat().st_ino  # linked, not copied
    published = {name: (out / name).read_bytes() for name in RUN_FILES}

    shutil.rmtree(out)  # the setting comes back after DVC deleted its output: nothing is retrained
    mtime = (work_dir / "last.pt").stat().st_mtime_ns
    assert train_published(cfg, 0, out, work_root) == summary
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == published
    assert (work_dir / "last.pt").stat().st_mtime_ns == mtime


def test_work_dir_is_keyed_by_what_defines_the_run(finished, tmp_path, monkeypatch):
    cfg = finished[0]

    def key(c: RunConfig, seed: int = 0) -> Path:
        return tood.engine.checkpoint.work_dir_for(tmp_path, c, seed)

    assert key(cfg).parent == tmp_path and key(cfg).name.startswith("tiny-seed0-")
    same = [
        dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, score_thr=0.3), seeds=(0, 1)),
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=7, num_threads=2)),
    ]
    assert all(key(c) == key(cfg) for c in same)
    other = [
        dataclasses.replace(cfg, assign=dataclasses.replace(cfg.assign, alpha=0.5)),
        dataclasses.replace(cfg, variant="tiny2"),
        dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.02)),
    ]
    assert len({key(c) for c in other} | {key(cfg), key(cfg, 1)}) == 5
    before = key(cfg)
    monkeypatch.setattr(tood.engine.checkpoint, "source_fingerprint", lambda: "0" * 64)
    assert key(cfg) != before  # other tood/ code: another folder


def test_non_finite_loss_stops_naming_step_and_term(env, monkeypatch):
    cfg = tiny_config(env / "data")
    out = env / "diverged"
    real_loss = Detector.compute_loss

    def nan_box_in_epoch_one(self, *args, epoch, **kwargs):
        losses = real_loss(self, *args, epoch=epoch, **kwargs)
        if epoch == 1:
            losses["loss_box"] = losses["loss_box"] * float("nan")
            losses["loss"] = losses["loss_cls"] + losses["loss_box"]
        return losses

    monkeypatch.setattr(Detector, "compute_loss", nan_box_in_epoch_one)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss_box at epoch 1 .*iteration 2") as err:
        train(cfg, 0, out)
    assert "loss_cls" not in str(err.value).split(":")[0]  # only the bad term is named as the cause
    ckpt = torch.load(out / "last.pt", weights_only=True)  # the last good (epoch-1) checkpoint
    assert ckpt["epoch"] == 1 and ckpt["summary"] is None
    Detector(cfg.model, 3).load_state_dict(ckpt["model"])
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert _client().get_run(run_id).info.status == "FAILED"


def test_changed_training_settings_start_afresh_but_eval_settings_do_not(finished):
    cfg, out, _ = finished
    new_eval = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, score_thr=0.3), seeds=(0, 1))
    assert tood.engine.checkpoint.usable_checkpoint(out / "last.pt", new_eval, 0) is not None
    new_alpha = dataclasses.replace(cfg, assign=dataclasses.replace(cfg.assign, alpha=0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tood.engine.checkpoint.usable_checkpoint(out / "last.pt", new_alpha, 0) is None
        assert tood.engine.checkpoint.usable_checkpoint(out / "last.pt", cfg, 1) is None  # another seed
    assert any("assign.alpha" in str(w.message) for w in caught)


def test_checkpoint_from_other_source_code_is_not_resumed(finished, monkeypatch):
    """A run folder re-used after a tood/ edit (train into the same out_dir by hand, or a work dir copied
    around): a finished checkpoint of the old code must not be returned as the new result."""
    cfg, out, _ = finished
    assert tood.engine.checkpoint.usable_checkpoint(out / "last.pt", cfg, 0) is not None
    monkeypatch.setattr(tood.engine.checkpoint, "source_fingerprint", lambda: "0" * 64)
    with pytest.warns(UserWarning, match="tood/ source code"):
        assert tood.engine.checkpoint.usable_checkpoint(out / "last.pt", cfg, 0) is None


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_train(env):
    cfg = tiny_config(env / "data", epochs=1, amp="bf16", channels_last=True)
    summary = train(cfg, 0, env / "bf16")
    assert math.isfinite(summary["final_loss"]) and summary["iterations"] == 2


def test_training_reports_progress_with_an_eta_for_the_run_in_a_log(env, monkeypatch, capsys):
    """Issue 18: long stages were silent in a log; tqdm's carriage-return bar is not a log line."""
    from tood import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line per step instead of one per 30 s
    train(tiny_config(env / "data"), 0, env / "progress")
    err = capsys.readouterr().err  # pytest's capture is not a terminal: the log form
    assert "\r" not in err
    lines = re.findall(r"^train epoch (\d)/2: (\d)/4 steps .*ETA", err, flags=re.MULTILINE)
    assert lines == [("1", "1"), ("1", "2"), ("2", "3"), ("2", "4")], (
        err
    )  # 2 epochs of 2 steps: counts the run
