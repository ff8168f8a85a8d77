"""Rank 0's record of a run: losses.csv rows and MLflow metrics, without a step twice after a resume."""

from __future__ import annotations

import csv
from pathlib import Path

from tood.engine import tracking


class RunLogger:
    """Rank 0's outputs: a row in losses.csv and MLflow metrics per logged step (step = global
    iteration), epoch means (step = epochs done) and the run's totals.

    `logged_steps` ({key: last step}, from the MLflow run being resumed) holds back what the killed
    process already logged: the resumed run replays the same steps with the same values, and MLflow
    would otherwise keep both copies.
    """

    def __init__(self, csv_path: Path, resume_epoch: int, logged_steps: dict[str, int]):
        self.csv_path = csv_path
        self.columns: list[str] | None = _truncate_csv(csv_path, resume_epoch)
        self.logged_steps = logged_steps

    def log(self, metrics: dict[str, float], step: int) -> None:
        """MLflow metrics at `step`, except keys already logged at this step or a later one."""
        fresh = {k: v for k, v in metrics.items() if step > self.logged_steps.get(k, -1)}
        tracking.log_metrics(fresh, step=step)

    def step(self, iteration: int, epoch: int, lr: float, means: dict[str, float], speed: float) -> None:
        if self.columns is None:  # fixed by the first row: loss_ctr only for a head that has centerness
            self.columns = ["step", "epoch", "lr", "loss", *(k for k in means if k != "loss")]
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        row = {"step": iteration, "epoch": epoch, "lr": lr, **means}
        with self.csv_path.open(
            "a", newline=""
        ) as f:  # "nan": a term this phase does not compute (loss_ctr in TAL)
            csv.writer(f).writerow([row.get(c, "nan") for c in self.columns])
        metrics = {f"train/{k}": v for k, v in means.items()}
        self.log({**metrics, "train/lr": lr, "train/images_per_s": speed}, step=iteration)


def _truncate_csv(path: Path, resume_epoch: int) -> list[str] | None:
    """Drop rows logged after the checkpoint being resumed (a killed epoch is re-run); return the header."""
    if resume_epoch == 0 or not path.exists():
        path.unlink(missing_ok=True)
        return None
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    header, body = rows[0], [r for r in rows[1:] if int(r[1]) < resume_epoch]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    return header
