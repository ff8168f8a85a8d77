"""Budget curves (tood/engine/curve.py, issue 16): points and steps, MLflow, resume without a point twice,
no effect on training, the final point against the evaluate stage, the CPU/precision record.

Tiny runs on the generated COCO set of the training tests (4 train images, batch 2: 2 steps per epoch).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import test_train  # the tiny COCO set, config and fixture of the training tests
import torch

import tood.engine.train
from tood.config import ConfigError, EvalConfig
from tood.engine.checkpoint import work_dir_for
from tood.engine.curve import CURVE_FILE, curve_columns, curve_config, curve_epochs, read_curve
from tood.engine.inference import evaluate_checkpoint
from tood.engine.runtime import device_name
from tood.engine.train import train


def curve_cfg(root, every: int = 1, epochs: int = 3):
    cfg = test_train.tiny_config(root / "data", epochs=epochs)
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, curve_every_epochs=every))


env = test_train.env  # the training tests' fixture: the tiny COCO set and a private MLflow store


@pytest.fixture(scope="module")
def finished(env):
    """One uninterrupted 3-epoch run with a point after every epoch: (cfg, out_dir, summary)."""
    cfg = curve_cfg(env)
    return cfg, env / "uninterrupted", train(cfg, 0, env / "uninterrupted")


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_curve_epochs_known_values():
    assert curve_epochs(12, 2) == [2, 4, 6, 8, 10, 12]
    assert curve_epochs(12, 5) == [5, 10, 12]  # the last epoch is always a point: the evaluate stage's
    assert curve_epochs(3, 4) == [3]
    assert curve_epochs(12, 0) == []  # off


def test_curve_images_are_the_first_n_of_the_evaluated_ones(env):
    cfg = curve_cfg(env)
    with_n = lambda c, n: dataclasses.replace(c, eval=dataclasses.replace(c.eval, curve_max_images=n))
    assert curve_config(cfg) is cfg  # 0: the evaluate stage's images
    assert curve_config(with_n(cfg, 1)).data.max_val_images == 1
    capped = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_val_images=1))
    assert (
        curve_config(with_n(capped, 5)) is with_n(capped, 5)
        or curve_config(with_n(capped, 5)).data == capped.data
    )


def test_curve_settings_are_validated_and_change_neither_the_key_nor_training(env):
    with pytest.raises(ConfigError, match=r"eval\.curve_every_epochs: -1"):
        EvalConfig(curve_every_epochs=-1)
    with pytest.raises(ConfigError, match=r"eval\.curve_max_images: -2"):
        EvalConfig(curve_max_images=-2)
    cfg = curve_cfg(env)
    other = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, curve_every_epochs=0, curve_max_images=7)
    )
    assert work_dir_for(env, cfg, 0) == work_dir_for(env, other, 0)


def test_points_steps_mlflow_and_cost(finished):
    _, out, summary = finished
    rows = read_curve(out / CURVE_FILE)
    assert [(r["step"], r["epoch"], r["num_images"]) for r in rows] == [(2, 1, 2), (4, 2, 2), (6, 3, 2)]
    assert all(0 <= r["AP"] <= 1 and r["eval_s"] > 0 for r in rows)
    for key in ("AP", "AP50", "AP75"):
        assert _history(summary["mlflow_run_id"], f"val/{key}") == [(r["step"], r[key]) for r in rows]
    assert summary["curve_time_s"] == pytest.approx(sum(r["eval_s"] for r in rows))
    assert curve_columns(out / CURVE_FILE)["step"] == [2, 4, 6]


def test_curves_leave_training_bit_identical(finished, env):
    """The same run with curves off: the same losses and weights, and an empty (header-only) curve.csv."""
    _, out_a, summary_a = finished
    cfg_off = curve_cfg(env, every=0)
    summary_b = train(cfg_off, 0, env / "no_curve")
    assert summary_b["final_loss"] == summary_a["final_loss"] and summary_b["curve_time_s"] == 0
    assert (env / "no_curve" / "losses.csv").read_text() == (out_a / "losses.csv").read_text()
    a = torch.load(out_a / "last.pt", weights_only=True)["model"]
    b = torch.load(env / "no_curve" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_curve(env / "no_curve" / CURVE_FILE) == []


def test_killed_after_a_point_before_its_checkpoint_resumes_without_a_point_twice(finished, env, monkeypatch):
    """The worst moment: the point of epoch 2 is on disk and in MLflow, its checkpoint is not."""
    cfg, out_a, summary_a = finished
    out = env / "killed"
    real_save = tood.engine.train.save_run_checkpoint

    def dies_saving_epoch_two(state, *args, **kwargs):
        if state.epoch == 2:
            raise test_train.Killed  # stands in for SIGKILL
        return real_save(state, *args, **kwargs)

    monkeypatch.setattr(tood.engine.train, "save_run_checkpoint", dies_saving_epoch_two)
    with pytest.raises(test_train.Killed):
        train(cfg, 0, out)
    assert [r["epoch"] for r in read_curve(out / CURVE_FILE)] == [1, 2]
    monkeypatch.setattr(tood.engine.train, "save_run_checkpoint", real_save)
    summary = train(cfg, 0, out)
    rows, rows_a = read_curve(out / CURVE_FILE), read_curve(out_a / CURVE_FILE)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "eval_s"} for r in rs]
    assert strip(rows) == strip(rows_a)  # the same points, bit-identical, none twice
    assert _history(summary["mlflow_run_id"], "val/AP") == _history(summary_a["mlflow_run_id"], "val/AP")


def test_final_point_is_what_the_evaluate_stage_measures(finished):
    cfg, out, _ = finished
    metrics = evaluate_checkpoint(cfg, out / "last.pt")
    final = read_curve(out / CURVE_FILE)[-1]
    assert (final["AP"], final["AP50"], final["AP75"]) == (metrics["AP"], metrics["AP50"], metrics["AP75"])


def test_device_and_precision_are_recorded(finished):
    _, out, summary = finished
    from mlflow import MlflowClient

    ckpt = torch.load(out / "last.pt", weights_only=True)
    here = device_name(torch.device("cpu"))
    assert ckpt["devices"] == [here] and ckpt["amp"] == "fp32" and here
    tags = MlflowClient().get_run(summary["mlflow_run_id"]).data.tags
    assert (tags["device"], tags["precision"]) == (here, "fp32")
    metrics = evaluate_checkpoint(finished[0], out / "last.pt")
    assert (metrics["precision"], metrics["device"], metrics["eval_device"]) == ("fp32", here, here)
    json.dumps(metrics)  # plain JSON for the metrics file


def test_finished_run_warns_when_its_curve_was_measured_at_other_epochs(finished, env):
    _, out, summary = finished
    sparser = curve_cfg(env, every=2)
    with pytest.warns(UserWarning, match=r"epochs \[1, 2, 3\].*asks for \[2, 3\]"):
        assert train(sparser, 0, out) == summary  # not re-run: the settings change nothing it trains


@pytest.mark.slow
def test_two_gloo_ranks_record_one_curve_on_rank_zero(env, tmp_path):
    """torchrun with 2 ranks through the train CLI: rank 0 alone measures (the other waits for it at the
    next all-reduce), the run finishes, and its curve has each point once."""
    import os
    import subprocess
    import sys

    import yaml

    params = {
        "alpha": 1.0, "beta": 6.0, "seeds": [0], "data": {"root": str(env / "data"), "img_scale": [64, 64]},
        "model": {"depth": 18, "fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
        "assign": {"warmup_epochs": 1}, "optim": {"warmup_iters": 3},
        "train": {"epochs": 2, "batch_size": 2, "log_every": 1, "num_threads": 1, "amp": "fp32"},
        "eval": {"batch_size": 2, "curve_every_epochs": 1}, "variants": {},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    repo = test_train.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pipeline.train_variant", "--params", str(tmp_path / "params.yaml"), "--variant", "tood"]
    cmd += ["--out", str(tmp_path / "runs")]
    run_env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    run_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/m.db"
    proc = subprocess.run(
        cmd, cwd=repo, env=run_env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_curve(tmp_path / "runs" / "seed0" / CURVE_FILE)
    assert [(r["step"], r["epoch"]) for r in rows] == [(2, 1), (4, 2)]  # 4 images, global batch 2
