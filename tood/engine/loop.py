"""One step and one epoch of training: the lr schedule, the loader's per-epoch order, forward (autocast),
fp32 loss and SGD step.

The recipe is the reference 1x schedule [R: tood_r50_fpn_1x_coco.py, schedule_1x.py]: SGD (momentum 0.9,
weight decay 1e-4 on every parameter, as mmdet 2.x applies it), lr 0.01 at batch 16 scaled linearly with
the global batch, linear warm-up from 0.001x over the first iterations, x0.1 after the epochs in
`optim.steps`. The lr is a pure function of (iteration, epoch) so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tood.config import OptimConfig, RunConfig
from tood.data.dataset import CocoDetection, build_loader
from tood.engine.runtime import AMP_DTYPES
from tood.model.detector import Detector
from tood.progress import progress


class TrainingDiverged(RuntimeError):
    """A loss term became non-finite; the message names the step and the term."""


def lr_at(
    iteration: int,
    epoch: int,
    *,
    base_lr: float,
    warmup_iters: int,
    warmup_ratio: float,
    steps: tuple[int, ...],
    gamma: float,
) -> float:
    """Learning rate of 0-based `iteration` (counted over the whole run) in 0-based `epoch`.

    Step policy on the epoch, linear warm-up on the iteration, composed as mmcv's LrUpdaterHook does:
    lr = regular * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio)) while i < warmup_iters.
    """
    regular = base_lr * gamma ** sum(epoch >= s for s in steps)
    if iteration >= warmup_iters:
        return regular
    k = (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule from the reference lr (0.01 at batch 16, not mmdet's 0.02) [R]."""
    return optim.lr * global_batch / optim.base_batch


def schedule_lr(optim: OptimConfig, global_batch: int, iteration: int, epoch: int) -> float:
    return lr_at(
        iteration, epoch, base_lr=scaled_lr(optim, global_batch), warmup_iters=optim.warmup_iters,
        warmup_ratio=optim.warmup_ratio, steps=optim.steps, gamma=optim.gamma,
    )  # fmt: skip


def train_loader(dataset: CocoDetection, batch_size: int, *, seed: int, rank: int, world: int, workers: int):
    """This rank's loader; call `set_loader_epoch` before each epoch (order and flips depend on (seed, epoch)).

    The order comes from a DistributedSampler seeded with seed*1000 + epoch, also with world == 1, so one
    process and N ranks draw the same permutation: rank r takes every world-th index, and the union of
    the ranks' i-th batches is the single-process i-th global batch. Flips come from data.EpochSampler's
    per-epoch table, which does not depend on the rank either.
    """
    order = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed * 1000)
    return build_loader(
        dataset, batch_size, shuffle=False, seed=seed, num_workers=workers, drop_last=False, sampler=order
    )


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Pin the epoch of the sampler and the workers' seed generator, so a resumed run replays it exactly."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 1000 + epoch)


@dataclass
class TrainState:
    """What the loop mutates; everything in it is saved in the checkpoint (model/optimizer via state dicts)."""

    detector: Detector  # the unwrapped model (weights, compute_loss, checkpoint)
    model: nn.Module  # detector, or its DDP wrapper (forward)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: str = "fp32"  # resolved precision (resolve_amp), fixed for the whole run, resumes included
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    train_time_s: float = 0.0  # wall time of the epochs run so far (summed over resumes)
    images_seen: int = 0
    step_time_s: float = 0.0  # this process's time inside train_step: not checkpointed, for print_timing
    devices: tuple[str, ...] = ()  # CPU model / GPU name of each machine that trained the run (device_name)


def train_step(
    state: TrainState, batch, cfg: RunConfig, device: torch.device, world: int
) -> dict[str, float]:
    """Forward (autocast), fp32 loss, finiteness check, backward and SGD step; returns the loss terms.

    The loss terms are averaged over ranks for logging and for the check, so every rank agrees on
    whether to stop (`.tolist()` is the step's one sync point).
    """
    images = batch.images.to(device, non_blocking=True)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    amp_dtype = AMP_DTYPES[state.amp]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = state.model(images)
    losses = compute_loss(state.detector, out, batch, device, epoch=state.epoch, cfg=cfg)  # fp32
    values = torch.stack([v.detach().float() for v in losses.values()])  # (T,)
    if world > 1:
        dist.all_reduce(values)
        values /= world
    logged = dict(zip(losses, values.tolist()))
    bad = [k for k, v in logged.items() if k != "loss" and not math.isfinite(v)]
    if not bad and not math.isfinite(logged["loss"]):
        bad = ["loss"]
    if bad:
        raise TrainingDiverged(
            f"non-finite {', '.join(bad)} at epoch {state.epoch} (0-based), iteration {state.iteration} "
            f"(0-based, global step {state.iteration + 1}): "
            + ", ".join(f"{k}={v}" for k, v in logged.items())
        )
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(losses["loss"]).backward()
    if cfg.optim.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.detector.parameters(), cfg.optim.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return logged


def compute_loss(detector: Detector, out, batch, device: torch.device, *, epoch: int, cfg: RunConfig) -> dict:
    """Detector.compute_loss on this batch's padded GTs; outside autocast, so assignment runs in fp32."""
    with torch.autocast(device.type, enabled=False):
        return detector.compute_loss(
            out, batch.gt_boxes.to(device), batch.gt_labels.to(device), batch.gt_mask.to(device),
            tuple(batch.images.shape[-2:]), epoch=epoch, assign_cfg=cfg.assign, loss_cfg=cfg.loss,
        )  # fmt: skip


@dataclass
class EpochLog:
    """Running sums of the loss terms: one interval (log rows) and the whole epoch (epoch summary)."""

    interval: dict
    total: dict
    interval_steps: int = 0
    interval_images: int = 0
    interval_start: float = 0.0
    steps: int = 0

    def add(self, losses: dict[str, float], images: int) -> None:
        for k, v in losses.items():
            self.interval[k] = self.interval.get(k, 0.0) + v
            self.total[k] = self.total.get(k, 0.0) + v
        self.interval_steps += 1
        self.interval_images += images
        self.steps += 1

    def flush(self) -> tuple[dict[str, float], float]:
        """Mean losses and images/s of the interval since the last flush; starts a new interval."""
        now = time.perf_counter()
        means = {k: v / self.interval_steps for k, v in self.interval.items()}
        speed = self.interval_images / max(now - self.interval_start, 1e-9)
        self.interval, self.interval_steps, self.interval_images, self.interval_start = {}, 0, 0, now
        return means, speed


def train_one_epoch(
    state: TrainState,
    loader: DataLoader,
    cfg: RunConfig,
    device: torch.device,
    *,
    rank: int,
    world: int,
    logger,
) -> dict[str, float]:
    """One pass over `loader`; logs every cfg.train.log_every steps; returns the epoch-mean loss terms."""
    state.model.train()
    log = EpochLog({}, {}, interval_start=time.perf_counter())
    global_batch = cfg.train.batch_size
    # the ETA is for the whole run: every epoch's bar counts from the steps done before it
    bar = progress(
        loader, desc=f"train epoch {state.epoch + 1}/{cfg.train.epochs}", unit="step", disable=rank != 0,
        total=cfg.train.epochs * len(loader), initial=state.epoch * len(loader),
    )  # fmt: skip
    for i, batch in enumerate(bar):
        lr = schedule_lr(cfg.optim, global_batch, state.iteration, state.epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        losses = train_step(state, batch, cfg, device, world)
        state.step_time_s += time.perf_counter() - start
        state.iteration += 1
        images = batch.images.shape[0] * world
        state.images_seen += images
        log.add(losses, images)
        if state.iteration % cfg.train.log_every == 0 or i == len(loader) - 1:
            means, speed = log.flush()
            bar.set_postfix(
                {**{k: f"{v:.4f}" for k, v in means.items()}, "lr": f"{lr:.2e}", "img/s": f"{speed:.1f}"}
            )
            if logger is not None:
                logger.step(state.iteration, state.epoch, lr, means, speed)
    return {k: v / max(log.steps, 1) for k, v in log.total.items()}
