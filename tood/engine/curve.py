"""Budget curves (issue 16): a training run measures the AP of its current weights at a few fixed points.

An ablation measured where one side has not finished learning measures learning speed, not the design
(issue 16: at 1,056 steps T-Head + ATSS sits 16 AP under the parallel head, at 2,112 steps 0.5 AP). A curve
on every run shows whether a verdict holds over the last part of training or changes with the budget.

Points: after every `eval.curve_every_epochs`-th epoch and after the last one (`curve_epochs`); the step is
the number of optimizer steps done, the global step of losses.csv and MLflow. These are points of *one*
run's schedule (lr drops included), not the ends of shorter runs: the curve says whether the verdict moves
late in this run, not what a run with a smaller budget would reach (bench/calibration trains those).

What a point measures: COCO AP, AP50, AP75 of the first `eval.curve_max_images` val images (0: the evaluate
stage's images) with the evaluate stage's own code (tood.engine.inference.run_inference + coco_eval, fp32,
eval.* post-processing) and the test-score rule of the assigner that trained the epoch just finished
(uses_centerness). The Table 6 alignment analysis is left out (cost). With the evaluate stage's images the
last point is the AP the evaluate stage reports (tests/test_curve.py).

Training is not disturbed: every RNG state is saved before a point and restored after it (the val loader
draws from its own generator anyway), and the model goes back to train mode, so a run with curves trains
bit-identically to one without (tests/test_curve.py) and resumes bit-identically (tests/test_train.py).
Resuming: a point is written (curve.csv row, MLflow val/AP at its step) before the checkpoint of its epoch;
a resumed run drops the rows after its checkpoint's epoch and RunLogger skips MLflow steps already logged,
so the curve has no point twice and none missing. Only rank 0 evaluates; under DDP the other ranks wait
for it at the next step's all-reduce.

Cost: bench/RESULTS.md §6 (measured on the default shapes run).
"""

from __future__ import annotations

import csv
import dataclasses
import time
import warnings
from pathlib import Path

from tood.config import RunConfig
from tood.data.dataset import build_dataset, build_loader
from tood.engine.checkpoint import rng_state, set_rng_state
from tood.engine.evaluate import coco_eval
from tood.engine.inference import run_inference, uses_centerness
from tood.model.detector import Detector

CURVE_FILE = "curve.csv"
CURVE_KEYS = ("AP", "AP50", "AP75")  # COCO AP in [0, 1], as the metrics files store it
COLUMNS = ("step", "epoch", "num_images", *CURVE_KEYS, "eval_s")


def curve_epochs(epochs: int, every: int) -> list[int]:
    """Epochs (1-based, completed) after which a run measures a point: every `every`-th and the last.

    e.g. (12, 2) -> [2, 4, 6, 8, 10, 12]; (12, 5) -> [5, 10, 12]; every 0 -> [] (curves off).
    """
    if every <= 0:
        return []
    return sorted({*range(every, epochs + 1, every), epochs})


def curve_config(cfg: RunConfig) -> RunConfig:
    """cfg with the val split cut to the curve's images: the first eval.curve_max_images (0: as evaluated)."""
    n, evaluated = cfg.eval.curve_max_images, cfg.data.max_val_images
    if n == 0 or (evaluated and evaluated <= n):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_val_images=n))


class BudgetCurve:
    """Rank 0's budget curve of one run: curve.csv rows and MLflow `val/<key>` metrics at their step."""

    def __init__(self, cfg: RunConfig, csv_path: Path, resume_epoch: int, logger, data_root: Path | None):
        self.cfg, self.csv_path, self.logger, self.data_root = cfg, Path(csv_path), logger, data_root
        self.epochs = set(curve_epochs(cfg.train.epochs, cfg.eval.curve_every_epochs))
        self._val = None  # (dataset, loader), built at the first point
        rows = [r for r in read_curve(self.csv_path) if r["epoch"] <= resume_epoch] if resume_epoch else []
        _write_rows(self.csv_path, rows)  # a killed epoch's point is measured again

    def record(self, detector: Detector, epoch: int, step: int) -> None:
        """Measure and log the point after `epoch` (1-based, completed) if it is one of the curve's."""
        if epoch not in self.epochs:
            return
        start = time.perf_counter()
        if self._val is None:
            dataset = build_dataset(curve_config(self.cfg), self.data_root, train=False)
            self._val = (
                dataset,
                build_loader(dataset, self.cfg.eval.batch_size, shuffle=False, seed=0, drop_last=False),
            )
        dataset, loader = self._val
        rng, was_training = rng_state(), detector.training
        try:
            use_ctr = uses_centerness(self.cfg.assign, self.cfg.loss, epoch)  # the rule of epoch `epoch`
            results, _ = run_inference(
                detector, loader, self.cfg.eval, use_ctr, dataset.cat_ids, progress=False, alignment=False
            )
            metrics = coco_eval(dataset.coco, results)
        finally:
            set_rng_state(rng)
            detector.train(was_training)
        row = {
            "step": step,
            "epoch": epoch,
            "num_images": len(dataset),
            **{k: metrics[k] for k in CURVE_KEYS},
        }
        row["eval_s"] = time.perf_counter() - start
        _write_rows(self.csv_path, [row], append=True)
        self.logger.log({f"val/{k}": metrics[k] for k in CURVE_KEYS}, step=step)

    def total_s(self) -> float:
        """Seconds spent on this run's points so far (over resumes): the feature's cost."""
        return sum(r["eval_s"] for r in read_curve(self.csv_path))


def read_curve(path: Path) -> list[dict]:
    """curve.csv -> [{step, epoch, num_images: int, AP, AP50, AP75, eval_s: float}, ...]; [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ints = ("step", "epoch", "num_images")
    return [{k: int(r[k]) if k in ints else float(r[k]) for k in COLUMNS} for r in rows]


def curve_columns(path: Path) -> dict:
    """A run's curve for its metrics file: {"step": [...], "epoch": [...], "AP": [...], "AP50": [...],
    "AP75": [...], "num_images": [...]} (lists in step order; empty lists for a run without curve)."""
    rows = read_curve(path)
    return {k: [r[k] for r in rows] for k in ("step", "epoch", *CURVE_KEYS, "num_images")}


def _write_rows(path: Path, rows: list[dict], append: bool = False) -> None:
    """Rows of COLUMNS; a new (or rewritten) file starts with the header, so a run with curves off still
    has an (empty) curve.csv to publish."""
    fresh = not append or not path.exists()
    with path.open("w" if fresh else "a", newline="") as f:
        writer = csv.writer(f)
        if fresh:
            writer.writerow(COLUMNS)
        writer.writerows([[row[c] for c in COLUMNS] for row in rows])


def check_finished_curve(path: Path, cfg: RunConfig) -> None:
    """Warn when a finished run's curve was measured at other epochs than cfg asks for now.

    The curve settings are not part of the run's key (they do not change what is trained), so a finished
    run is not repeated for them; its curve stays as measured, and this says so.
    """
    measured = [r["epoch"] for r in read_curve(path)]
    wanted = curve_epochs(cfg.train.epochs, cfg.eval.curve_every_epochs)
    if measured != wanted:
        warnings.warn(
            f"{path}: the finished run's budget curve has points after epochs {measured}, eval.curve_every_"
            f"epochs={cfg.eval.curve_every_epochs} asks for {wanted}; curve settings do not re-run a finished "
            f"run (they change nothing it trains): delete {path.parent} to train and measure it again",
            stacklevel=2,
        )
