"""Training: SGD with linear warm-up and step decay, the explicit-epoch ATSS warm-up, resumable checkpoints.

The step, the epoch and the lr schedule are in tood.engine.loop; checkpoints, fingerprints and the keyed
work folders in tood.engine.checkpoint; devices and precision in tood.engine.runtime; losses.csv and
MLflow metrics in tood.engine.runlog; the budget curve (AP at a few points of the run, issue 16) in
tood.engine.curve. This module puts them together into one run.

Resuming: `out_dir/last.pt` is written (atomically) at the end of every epoch, and once before the first
one, with the model, optimizer, completed epoch, iteration and every RNG state. A re-run of `train` with
the same `out_dir` continues from it, so a run killed mid-way ends bit-identical on CPU to one never
interrupted (the loader order is a pure function of (seed, epoch)), and its MLflow run gets no step
twice. A finished run is a no-op. A checkpoint written with other training settings, or by other tood/
source code, is not resumed but started afresh.

Under DVC (`train_published`): a train stage's runs/<variant> is an ordinary cached output, so DVC's
run-cache restores a setting it has trained before without running anything; DVC deletes such an output
before re-running its stage, so training happens in a folder outside DVC's outputs, keyed by everything
that defines the run (`work_dir_for`), and the finished run is then copied into runs/<variant>/seed<k>.
The keyed folder is what a killed stage resumes from, and it finds a finished run again where the
run-cache cannot (`-S alpha=1` after `alpha: 1.0`: DVC compares the values as written).

Only rank 0 logs, writes files and talks to MLflow; under torchrun every rank trains a
DistributedDataParallel replica on a `global_batch // world_size` slice of each global batch.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tood.config import RunConfig, resolve_data_root
from tood.data.dataset import build_dataset
from tood.engine import tracking
from tood.engine.checkpoint import (
    CHECKPOINT,
    exclusive,
    init_fingerprint,
    publish_run,
    rng_state,
    save_checkpoint,
    set_rng_state,
    source_fingerprint,
    usable_checkpoint,
    work_dir_for,
)
from tood.engine.curve import CURVE_FILE, BudgetCurve, check_finished_curve
from tood.engine.loop import TrainState, scaled_lr, set_loader_epoch, train_loader, train_one_epoch
from tood.engine.runlog import RunLogger
from tood.engine.runtime import (
    describe_device,
    device_name,
    dist_info,
    pick_device,
    print_timing,
    process_age_s,
    run_precision,
    setup_determinism,
)
from tood.model.detector import Detector


def train(cfg: RunConfig, seed: int, out_dir: Path, data_root: Path | None = None) -> dict:
    """Train one (variant, seed) run into `out_dir`, resuming from out_dir/last.pt; returns the summary.

    Summary: final_loss (+ final_<term>, epoch means of the last epoch), epochs, iterations,
    train_time_s, images_per_s, curve_time_s (seconds of budget-curve points), mlflow_run_id, checkpoint.
    """
    out_dir = Path(out_dir)
    rank, world = dist_info()
    ckpt = usable_checkpoint(out_dir / CHECKPOINT, cfg, seed)
    if ckpt is not None and ckpt["epoch"] >= cfg.train.epochs:
        if rank == 0:
            check_finished_curve(out_dir / CURVE_FILE, cfg)
        return dict(ckpt["summary"])  # finished: no-op
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by world size {world}")
    if rank == 0:
        tracking.configure_tracking()  # before any heavy work: an unreachable server fails fast
        out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    setup_determinism(seed, cfg.train.num_threads)
    dataset = build_dataset(cfg, data_root, train=True)
    state = build_state(cfg, dataset.num_classes, device, world, ckpt)
    state.devices = _with(state.devices, device_name(device))
    if rank != 0:
        return _run_epochs(state, dataset, cfg, seed, device, rank, world, None, ckpt)
    print(f"train.amp: {cfg.train.amp} -> {state.amp} on {describe_device(device)}", flush=True)
    run_id = ckpt["mlflow_run_id"] if ckpt is not None else None
    run = tracking.start_run(cfg, seed, run_id=run_id, data_root=data_root)
    try:
        tracking.log_params({"train.amp_resolved": state.amp})  # the same value again on a resume
        tracking.set_tags({"device": "; ".join(state.devices), "precision": state.amp})  # issue 16
        _write_run_files(cfg, out_dir, run)
        summary = _run_epochs(
            state, dataset, cfg, seed, device, rank, world, run, ckpt, out_dir=out_dir, data_root=data_root
        )
    except BaseException as e:  # divergence, Ctrl-C, a tracking server gone: the MLflow run is FAILED
        tracking.abort_run()
        if isinstance(e, tracking.TrackingError):
            e.add_note(f"The checkpoint of epoch {state.epoch} is kept: {out_dir / CHECKPOINT}")
        raise
    tracking.end_run()
    print_timing(
        train_steps_s=state.step_time_s, process_s=process_age_s(), process_cpu_s=time.process_time()
    )
    return summary


def build_state(cfg: RunConfig, num_classes: int, device: torch.device, world: int, ckpt: dict | None):
    """Detector (+ DDP), SGD and grad scaler, restored from `ckpt` when resuming."""
    detector = Detector(cfg.model, num_classes).to(device)
    if cfg.train.channels_last:
        detector = detector.to(memory_format=torch.channels_last)
    params = [p for p in detector.parameters() if p.requires_grad]
    lr0 = scaled_lr(cfg.optim, cfg.train.batch_size)
    # fused: one pass per parameter instead of four; bit-identical updates on our CPU (tests/test_step_equivalence.py)
    optimizer = torch.optim.SGD(
        params, lr=lr0, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )  # fmt: skip
    amp = run_precision(cfg.train.amp, device, ckpt)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    state = TrainState(detector, detector, optimizer, scaler, amp)
    if ckpt is not None:
        detector.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.epoch, state.iteration = ckpt["epoch"], ckpt["iteration"]
        state.train_time_s, state.images_seen = ckpt["train_time_s"], ckpt["images_seen"]
        state.devices = tuple(ckpt.get("devices", ()))
        set_rng_state(ckpt["rng"])  # after model init, which consumed the same draws in the first run
    if world > 1:  # every parameter gets a gradient in every phase (see Detector.compute_loss)
        ids = [device.index] if device.type == "cuda" else None
        model = _sync_batchnorm(detector, cfg.model.norm, device)
        state.model = DistributedDataParallel(model, device_ids=ids)
    return state


def _sync_batchnorm(detector: Detector, norm: str, device: torch.device) -> nn.Module:
    """With `model.norm: sync_bn`, swap the backbone's BatchNorm2d for SyncBatchNorm (in place: the same
    parameters, so `state.detector` still sees them). torch has no CPU SyncBatchNorm kernel."""
    if norm != "sync_bn":
        return detector
    if device.type != "cuda":
        raise ValueError(
            "model.norm: sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
            "use bn (per-rank statistics) or frozen_bn for a multi-process CPU run"
        )
    detector.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(detector.backbone)
    return detector


def _run_epochs(
    state, dataset, cfg, seed, device, rank, world, run, ckpt, out_dir=None, data_root=None
) -> dict:
    if rank == 0:
        logged = tracking.last_logged_steps() if ckpt is not None else {}
        logger = RunLogger(out_dir / "losses.csv", state.epoch, logged)
        curve = BudgetCurve(cfg, out_dir / CURVE_FILE, state.epoch, logger, data_root)
    else:
        logger = curve = None
    if rank == 0 and ckpt is None:
        save_run_checkpoint(
            state, cfg, seed, dataset, run, out_dir, summary=None
        )  # epoch 0: fixes the run id early
    epoch_losses: dict[str, float] = {}
    per_rank = cfg.train.batch_size // world
    loader = train_loader(dataset, per_rank, seed=seed, rank=rank, world=world, workers=cfg.train.num_workers)
    if dataset.cache_images:
        dataset.preload()  # what the first batch would do: part of the start-up, not of the first step
    if rank == 0:
        print_timing(startup_s=process_age_s(), startup_cpu_s=time.process_time())
    while state.epoch < cfg.train.epochs:
        set_loader_epoch(loader, seed, state.epoch)
        start = time.perf_counter()
        epoch_losses = train_one_epoch(state, loader, cfg, device, rank=rank, world=world, logger=logger)
        state.train_time_s += time.perf_counter() - start
        state.epoch += 1
        if rank != 0:
            continue
        logger.log({f"epoch/{k}": v for k, v in epoch_losses.items()}, step=state.epoch)
        curve.record(state.detector, state.epoch, state.iteration)  # before the checkpoint: see curve.py
        last = state.epoch == cfg.train.epochs
        summary = _summary(state, epoch_losses, run, out_dir, curve) if last else None
        if summary is not None:
            totals = {k: summary[k] for k in ("train_time_s", "images_per_s", "curve_time_s")}
            logger.log(totals, step=0)
        save_run_checkpoint(state, cfg, seed, dataset, run, out_dir, summary=summary)
    if world > 1:
        dist.barrier()
    return _summary(state, epoch_losses, run, out_dir, curve)


def _summary(
    state: TrainState, epoch_losses: dict[str, float], run, out_dir: Path | None, curve: BudgetCurve | None
) -> dict:
    return {
        "final_loss": epoch_losses.get("loss", float("nan")),
        **{f"final_{k}": v for k, v in epoch_losses.items() if k != "loss"},
        "epochs": state.epoch,
        "iterations": state.iteration,
        "train_time_s": state.train_time_s,
        "images_per_s": state.images_seen / max(state.train_time_s, 1e-9),
        "curve_time_s": curve.total_s() if curve is not None else None,  # the budget curve's cost
        "mlflow_run_id": run.info.run_id if run is not None else None,
        "checkpoint": str(out_dir / CHECKPOINT) if out_dir is not None else None,
    }


def save_run_checkpoint(
    state: TrainState, cfg: RunConfig, seed: int, dataset, run, out_dir: Path, summary
) -> None:
    save_checkpoint(
        out_dir / CHECKPOINT,
        {
            "model": state.detector.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
            "amp": state.amp,  # resolved precision: a resume keeps it (run_precision)
            "devices": list(state.devices),  # CPU model / GPU name of every machine that trained it
            "epoch": state.epoch,
            "iteration": state.iteration,
            "train_time_s": state.train_time_s,
            "images_seen": state.images_seen,
            "rng": rng_state(),
            "seed": seed,
            "source": source_fingerprint(),
            "init": init_fingerprint(cfg.model.pretrained),
            "mlflow_run_id": run.info.run_id,
            "config": cfg.to_dict(),
            "cat_ids": [int(c) for c in dataset.cat_ids],
            "class_names": list(dataset.class_names),
            "summary": summary,
        },
    )


def _with(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    """`names` plus `name` if new: a run resumed on another machine lists both."""
    return names if name in names else (*names, name)


def _write_run_files(cfg: RunConfig, out_dir: Path, run) -> None:
    cfg.save(out_dir / "config.json")
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    (out_dir / "mlflow_run.json").write_text(json.dumps(info, indent=2) + "\n")
    tracking.log_artifact(out_dir / "config.json")


def train_published(
    cfg: RunConfig, seed: int, out_dir: Path, work_root: Path, data_root: Path | None = None
) -> dict:
    """`train` in the run's keyed folder under `work_root`, then publish the finished run into `out_dir`.

    A relative `work_root` is relative to $DVC_ROOT, as data.root is, so queued experiments (temporary
    copies of the repo) share one. Two processes that train the same run wait for each other; the second
    then finds it finished. Returns train's summary with `checkpoint` in `out_dir`.
    """
    work_dir = work_dir_for(resolve_data_root(work_root), cfg, seed)
    rank, world = dist_info()
    # DDP ranks share one folder, and rank 0 alone writes it: no lock (it would stop ranks 1.. forever)
    with exclusive(work_dir) if world == 1 else contextlib.nullcontext():
        summary = train(cfg, seed, work_dir, data_root=data_root)
        if rank == 0:
            publish_run(work_dir, Path(out_dir))
    return {**summary, "checkpoint": str(Path(out_dir) / CHECKPOINT)}
