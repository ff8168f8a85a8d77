"""Training: SGD with linear warm-up and step decay, the explicit-epoch ATSS warm-up, resumable checkpoints.

The recipe is the reference 1x schedule [R: tood_r50_fpn_1x_coco.py, schedule_1x.py]: SGD (momentum 0.9,
weight decay 1e-4 on every parameter, as mmdet 2.x applies it), lr 0.01 at batch 16 scaled linearly with
the global batch, linear warm-up from 0.001x over the first iterations, x0.1 after the epochs in
`optim.steps`. The lr is a pure function of (iteration, epoch) so resuming needs no scheduler state.

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
import csv
import fcntl
import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from tood import tracking
from tood.config import OptimConfig, RunConfig, resolve_data_root, resolve_repo_path
from tood.data import CocoDetection, build_loader
from tood.detector import Detector

CHECKPOINT = "last.pt"
RUN_FILES = (CHECKPOINT, "config.json", "mlflow_run.json", "losses.csv")  # what `publish_run` copies
# keys that do not change what is trained: a resumed or finished run ignores differences in these
_NON_TRAINING_KEYS = (
    "variant",
    "seeds",
    "eval.",
    "train.log_every",
    "train.num_threads",
    "train.num_workers",
)


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


# ---------------------------------------------------------------------------------------------------
# seeding, RNG state and checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Every RNG state as tensors and plain Python lists/ints, so the checkpoint loads with weights_only."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written last.pt."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def source_fingerprint() -> str:
    """sha256 over the tood/ package's .py files (names and bytes): the code a checkpoint was trained with."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def init_fingerprint(pretrained: str) -> str:
    """What the backbone starts from: "none", "imagenet", or the sha256 of the `pretrain` checkpoint file
    (its path alone would let a re-run pretraining stage leave stale finished runs in place)."""
    if pretrained in ("none", "imagenet"):
        return pretrained
    path = resolve_repo_path(pretrained)
    if not path.is_file():
        return f"missing:{pretrained}"
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per (path, mtime, size): every epoch's checkpoint records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def training_fingerprint(config: dict) -> dict:
    """The resolved hyperparameters that define what a run trains (flattened; see _NON_TRAINING_KEYS)."""
    return {k: v for k, v in _flatten(config).items() if not k.startswith(_NON_TRAINING_KEYS)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# ---------------------------------------------------------------------------------------------------
# data and devices


def build_dataset(cfg: RunConfig, data_root: Path | None, *, train: bool) -> CocoDetection:
    """The train or val split of cfg.data; `data_root` overrides cfg.data.root (e.g. DVC's repo root)."""
    d = cfg.data
    root = Path(data_root) if data_root is not None else resolve_data_root(d.root)  # $DVC_ROOT in queued exps
    images, ann = (d.train_images, d.train_ann) if train else (d.val_images, d.val_ann)
    return CocoDetection(
        root / images, root / ann, img_scale=d.img_scale, size_divisor=d.size_divisor,
        flip_prob=d.flip_prob if train else 0.0, mean=d.mean, std=d.std, train=train,
        max_images=d.max_train_images if train else d.max_val_images,
        cache_images=cfg.train.cache_images if train else False,
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


def dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def describe_device(device: torch.device) -> str:
    """e.g. "cpu (AVX512, native bf16: yes)" or "cuda:0 (NVIDIA H200)": what the precision choice read."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    native = "yes" if cpu_has_native_bf16() else "no"
    return f"{device.type} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {native})"


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc: start time in clock ticks after boot); None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def print_timing(**seconds: float | None) -> None:
    """One `timing: {json}` stdout line of stage-level seconds: bench/grid_time.py splits each DVC stage's
    wall time into start-up, compute and the rest with them. *_cpu_s: this process's CPU time (all threads)
    so far, the steadier figure on a shared machine, where wall time is mostly waiting for a core."""
    print("timing: " + json.dumps({k: round(v, 3) for k, v in seconds.items() if v is not None}), flush=True)


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


# autocast dtype of each resolved `train.amp` (None: no autocast)
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake) or AMX
    (Intel Sapphire Rapids+), with oneDNN to use it.

    Without it oneDNN emulates bf16 through fp32 conversions: a 2-core Xeon with AVX-512 but no bf16 ran
    the default step 2.9x slower in bf16 than in fp32 (issue 13), while an AMD EPYC with avx512_bf16 ran it
    faster (bench/RESULTS.md §5). torch.backends.cpu.get_cpu_capability() says "AVX512" on both.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return native and torch.backends.mkldnn.is_available()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision `train.amp` means on `device`: "auto" is bf16 on CUDA (where supported) and on CPUs
    with native bf16 (cpu_has_native_bf16), else fp32; the other values are themselves.

    Decided by capability, never by a start-up timing, so one machine always makes the same choice and
    its runs stay bit-reproducible; `python -m bench.ab --amp-check` measures that the choice is faster.
    """
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def _setup_determinism(seed: int, num_threads: int) -> None:
    """Seed every RNG. CPU kernels are deterministic at a fixed thread count, so a CPU run (and its resume)
    is bit-reproducible without torch.use_deterministic_algorithms, a process-wide switch we leave to
    the caller; on GPU, cuDNN/atomics make runs close but not bit-identical."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    seed_everything(seed)


# ---------------------------------------------------------------------------------------------------
# one step, one epoch


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
    bar = tqdm(
        loader, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}", disable=rank != 0, dynamic_ncols=True
    )
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


# ---------------------------------------------------------------------------------------------------
# rank-0 outputs: losses.csv and MLflow


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


# ---------------------------------------------------------------------------------------------------
# the run


def train(cfg: RunConfig, seed: int, out_dir: Path, data_root: Path | None = None) -> dict:
    """Train one (variant, seed) run into `out_dir`, resuming from out_dir/last.pt; returns the summary.

    Summary: final_loss (+ final_<term>, epoch means of the last epoch), epochs, iterations,
    train_time_s, images_per_s, mlflow_run_id, checkpoint.
    """
    out_dir = Path(out_dir)
    rank, world = dist_info()
    ckpt = _usable_checkpoint(out_dir / CHECKPOINT, cfg, seed)
    if ckpt is not None and ckpt["epoch"] >= cfg.train.epochs:
        return dict(ckpt["summary"])  # finished: no-op
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by world size {world}")
    if rank == 0:
        tracking.configure_tracking()  # before any heavy work: an unreachable server fails fast
        out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    _setup_determinism(seed, cfg.train.num_threads)
    dataset = build_dataset(cfg, data_root, train=True)
    state = build_state(cfg, dataset.num_classes, device, world, ckpt)
    if rank != 0:
        return _run_epochs(state, dataset, cfg, seed, device, rank, world, None, ckpt)
    print(f"train.amp: {cfg.train.amp} -> {state.amp} on {describe_device(device)}", flush=True)
    run_id = ckpt["mlflow_run_id"] if ckpt is not None else None
    run = tracking.start_run(cfg, seed, run_id=run_id, data_root=data_root)
    try:
        tracking.log_params({"train.amp_resolved": state.amp})  # the same value again on a resume
        _write_run_files(cfg, out_dir, run)
        summary = _run_epochs(state, dataset, cfg, seed, device, rank, world, run, ckpt, out_dir=out_dir)
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
        set_rng_state(ckpt["rng"])  # after model init, which consumed the same draws in the first run
    if world > 1:  # every parameter gets a gradient in every phase (see Detector.compute_loss)
        ids = [device.index] if device.type == "cuda" else None
        model = _sync_batchnorm(detector, cfg.model.norm, device)
        state.model = DistributedDataParallel(model, device_ids=ids)
    return state


def run_precision(amp: str, device: torch.device, ckpt: dict | None) -> str:
    """resolve_amp, except that a resumed run keeps the precision its checkpoint was trained in: the same
    `auto` resolves differently on another machine, and a run must not switch precision half-way."""
    resolved = resolve_amp(amp, device)
    if ckpt is None or ckpt.get("amp", resolved) == resolved:
        return resolved
    warnings.warn(
        f"train.amp: {amp} resolves to {resolved} on this machine, but the checkpoint being resumed was "
        f"trained in {ckpt['amp']}; continuing in {ckpt['amp']}"
    )
    return ckpt["amp"]


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


def _run_epochs(state, dataset, cfg, seed, device, rank, world, run, ckpt, out_dir=None) -> dict:
    if rank == 0:
        logged = tracking.last_logged_steps() if ckpt is not None else {}
        logger = RunLogger(out_dir / "losses.csv", state.epoch, logged)
    else:
        logger = None
    if rank == 0 and ckpt is None:
        _save(state, cfg, seed, dataset, run, out_dir, summary=None)  # epoch 0: fixes the run id early
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
        summary = _summary(state, epoch_losses, run, out_dir) if state.epoch == cfg.train.epochs else None
        if summary is not None:
            totals = {"train_time_s": summary["train_time_s"], "images_per_s": summary["images_per_s"]}
            logger.log(totals, step=0)
        _save(state, cfg, seed, dataset, run, out_dir, summary=summary)
    if world > 1:
        dist.barrier()
    return _summary(state, epoch_losses, run, out_dir)


def _summary(state: TrainState, epoch_losses: dict[str, float], run, out_dir: Path | None) -> dict:
    return {
        "final_loss": epoch_losses.get("loss", float("nan")),
        **{f"final_{k}": v for k, v in epoch_losses.items() if k != "loss"},
        "epochs": state.epoch,
        "iterations": state.iteration,
        "train_time_s": state.train_time_s,
        "images_per_s": state.images_seen / max(state.train_time_s, 1e-9),
        "mlflow_run_id": run.info.run_id if run is not None else None,
        "checkpoint": str(out_dir / CHECKPOINT) if out_dir is not None else None,
    }


def _save(state: TrainState, cfg: RunConfig, seed: int, dataset, run, out_dir: Path, summary) -> None:
    save_checkpoint(
        out_dir / CHECKPOINT,
        {
            "model": state.detector.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
            "amp": state.amp,  # resolved precision: a resume keeps it (run_precision)
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


def _usable_checkpoint(path: Path, cfg: RunConfig, seed: int) -> dict | None:
    """The checkpoint to resume from, or None when there is none or it was trained with other settings."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return None
    old, new = training_fingerprint(ckpt["config"]), training_fingerprint(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if ckpt.get("seed") != seed:
        changed.append("seed")
    if ckpt.get("source") != source_fingerprint():
        changed.append("tood/ source code")
    if ckpt.get("init") != init_fingerprint(cfg.model.pretrained):
        changed.append("model.pretrained checkpoint")
    if changed:
        warnings.warn(
            f"{path} was trained with different settings ({', '.join(changed[:5])}); starting afresh"
        )
        return None
    return ckpt


def _write_run_files(cfg: RunConfig, out_dir: Path, run) -> None:
    cfg.save(out_dir / "config.json")
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    (out_dir / "mlflow_run.json").write_text(json.dumps(info, indent=2) + "\n")
    tracking.log_artifact(out_dir / "config.json")


# ---------------------------------------------------------------------------------------------------
# runs under DVC: train in a folder keyed by the run's settings, publish into the stage's output


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
    with _exclusive(work_dir) if world == 1 else contextlib.nullcontext():
        summary = train(cfg, seed, work_dir, data_root=data_root)
        if rank == 0:
            publish_run(work_dir, Path(out_dir))
    return {**summary, "checkpoint": str(Path(out_dir) / CHECKPOINT)}


def work_dir_for(root: Path, cfg: RunConfig, seed: int) -> Path:
    """<root>/<variant>-seed<k>-<key>: key = sha256 of what defines the run (training_fingerprint, seed,
    tood/ source), so a folder never holds a different run. The variant is in the key because the MLflow
    run, named after it, is part of the result."""
    key = {
        "variant": cfg.variant,
        "seed": int(seed),
        "config": training_fingerprint(cfg.to_dict()),
        "source": source_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{cfg.variant}-seed{seed}-{digest}"


def publish_run(work_dir: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the RUN_FILES of a finished run in `work_dir`.

    The checkpoint is hard-linked (copied across file systems): never written in place (save_checkpoint
    renames a new file over it), so neither DVC's copy nor ours can change the other. The small files
    are copied, as losses.csv is appended to in place.
    """
    staging = out_dir.with_name(out_dir.name + ".publishing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in RUN_FILES:
        if name == CHECKPOINT:
            _link_or_copy(work_dir / name, staging / name)
        else:
            shutil.copy2(work_dir / name, staging / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `work_dir` (released when the process dies, however it dies)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that trains the same run in {work_dir}", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
