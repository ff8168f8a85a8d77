"""Typed, frozen run configuration built from params.yaml.

params.yaml layout (see the file itself for every value and its source):

    alpha, beta          top-level: the headline TOOD run's TAL exponents (t = s^alpha * u^beta, paper Eq. 9)
    seeds                list of seeds every variant is trained with (a variant may set its own `seeds`)
    trial                optional bool: a pipeline try-out (e.g. a tiny budget); tables.md then says at
                         the top that it supports no conclusions
    shapes               generator settings of the embedded synthetic dataset
    pretrain             the `pretrain` stage: our stand-in for ImageNet (shape-crop classification)
    data, model, assign, loss, optim, train, eval    shared sections, one dataclass each
    headline             overrides for the headline `tood` variant (its alpha/beta come from the top level)
    variants             {name: overrides}, one entry per paper ablation cell
    executor             where a train stage's runs execute (local processes or Slurm); not a training setting

A variant's overrides are flat keys of `model`, `assign` or `loss` (e.g. `head: parallel`, `assigner: atss`,
`alpha: 0.5`, `cls_target: iou`), plus `seeds: [...]`, which replaces the top-level list for that variant only
(issue 10: "the α/β cells may use fewer seeds if the table says so"; the headline always uses the top-level
`seeds`), and `schedule: 1.5`, which trains that variant for 1.5x `train.epochs` with its lr steps scaled
the same way (issue 20: the paper's 18-epoch rows of Table 2).
Loading is strict, as nanoGPT's configurator is: an unknown key, a wrong type or an out-of-range value
raises ConfigError naming the key path, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

HEADLINE = "tood"
_VARIANT_NAME = re.compile(
    r"[A-Za-z0-9_-]+"
)  # name of the headline variant; its alpha/beta are the top-level params


class ConfigError(ValueError):
    """A params file is invalid; the message names the key path, the value and what is allowed."""


@dataclass(frozen=True)
class ShapesConfig:
    seed: int = 0  # generator seed: same seed -> byte-identical annotation JSON and images
    num_train: int = 256
    num_val: int = 64
    image_size: int = 128  # square canvas side in pixels
    num_classes: int = 6
    max_objects: int = 12  # per image; crowding is drawn from 1..max_objects
    # object side sqrt(w*h) before rotation and occlusion: drawn from `size_distribution` between the floor
    # min_side_px and max_side_fraction * image_size (log-uniform: as many objects per octave of size)
    min_side_px: float = 4.0
    max_side_fraction: float = 0.9
    size_distribution: Literal["log_uniform", "uniform"] = "log_uniform"
    min_visible_fraction: float = 0.3  # objects hidden by more than 1 - this are dropped (no box)
    jpeg_quality: int = 90

    def __post_init__(self):
        _check_range(self, "num_train", lo=1)
        _check_range(self, "num_val", lo=1)
        _check_range(self, "image_size", lo=32)
        _check_range(self, "num_classes", lo=1, hi=12)
        _check_range(self, "max_objects", lo=1)
        _check_range(self, "min_side_px", lo=1.0)
        _check_range(self, "max_side_fraction", lo=0.0, hi=0.95, lo_open=True)
        _check_range(self, "min_visible_fraction", lo=0.0, hi=1.0)
        _check_range(self, "jpeg_quality", lo=1, hi=100)
        if self.min_side_px > self.max_side_fraction * self.image_size:
            raise ConfigError(
                f"shapes.min_side_px: {self.min_side_px} is larger than shapes.max_side_fraction * "
                f"shapes.image_size ({self.max_side_fraction * self.image_size:g} px)"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretrain` stage: our offline stand-in for ImageNet (tood/engine/pretrain.py), a ResNet of model.depth
    classifying shape crops. Its checkpoint is what `model.pretrained` names in the shapes profiles."""

    seed: int = 1000  # crop generator + training seed (crops: their own stream, tood.data.shapes.render_crop)
    num_train: int = 8192
    num_val: int = 1024
    crop_size: int = 64  # square crop side in pixels
    num_classes: int = 12  # shape kinds to classify: all 12, a superset of the detection classes
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1  # peak lr after the linear warm-up, then cosine to 0
    warmup_iters: int = 50
    weight_decay: float = 1e-4

    def __post_init__(self):
        for name in ("num_train", "num_val", "epochs", "batch_size"):
            _check_range(self, name, lo=1)
        _check_range(self, "crop_size", lo=32)
        _check_range(self, "num_classes", lo=2, hi=12)
        _check_range(self, "lr", lo=0.0, lo_open=True)
        _check_range(self, "warmup_iters", lo=0)
        _check_range(self, "weight_decay", lo=0.0)
        if self.batch_size > self.num_train:
            raise ConfigError(
                f"pretrain.batch_size: {self.batch_size} is larger than pretrain.num_train ({self.num_train})"
            )


@dataclass(frozen=True)
class DataConfig:
    # shapes: generated into root (a folder the generator made, or a new one); coco2017: downloaded into root;
    # coco: your own COCO-format folder at root, validated and never written to
    dataset: Literal["shapes", "coco2017", "coco"] = "shapes"
    root: str = "data/shapes"  # folder holding the images and annotations/ (relative to the repo root)
    train_images: str = "train"  # image folder under root
    train_ann: str = "annotations/instances_train.json"
    val_images: str = "val"
    val_ann: str = "annotations/instances_val.json"
    img_scale: tuple[int, int] = (1333, 800)  # (long, short) max sides, keep ratio [R: coco_detection.py]
    size_divisor: int = 32  # pad H and W to a multiple of this [R]
    flip_prob: float = 0.5  # horizontal flip, the only 1x augmentation [R]
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 [R]
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    max_train_images: int = 0  # 0 = all; >0 keeps the first N (tiny profiles, smoke runs)
    max_val_images: int = 0

    def __post_init__(self):
        _check_range(self, "size_divisor", lo=1)
        _check_range(self, "flip_prob", lo=0.0, hi=1.0)
        _check_range(self, "max_train_images", lo=0)
        _check_range(self, "max_val_images", lo=0)
        if min(self.img_scale) < 32:
            raise ConfigError(
                f"data.img_scale: {list(self.img_scale)} is too small; both sides must be >= 32"
            )
        if min(self.std) <= 0:
            raise ConfigError(f"data.std: {list(self.std)}; every entry must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    depth: Literal[18, 34, 50, 101] = 50  # torchvision ResNet depth
    # backbone initialisation: "none" (from scratch), "imagenet" (torchvision's weights API; needs network
    # or the hub cache) or the path of a checkpoint written by the `pretrain` stage (relative to the repo)
    pretrained: str = "none"
    frozen_stages: int = 1  # with pretrained weights: stem + this many stages frozen [R]; none from scratch
    # backbone norm: trainable BN (stats per rank under DDP), SyncBN (stats over all GPUs; CUDA only), or
    # FrozenBatchNorm2d (mmdet norm_eval=True + frozen affine [R], the COCO recipe with ImageNet weights)
    norm: Literal["bn", "sync_bn", "frozen_bn"] = "bn"
    fpn_channels: int = 256  # FPN and head width F [R]
    head: Literal["tood", "parallel"] = "tood"  # T-Head (paper Fig. 3b) or the ATSS-style parallel head (3a)
    stacked_convs: int = 6  # N task-interactive convs of the T-Head [P §3.1]; parallel head uses 4 per tower
    la_reduction: int = 8  # layer attention hidden width F // la_reduction (32 at F=256) [R: la_down_rate=8N]
    gn_groups: int = 32  # GroupNorm groups in the head [R]
    anchor: Literal["free", "based"] = "free"  # points + ltrb distances, or 8*stride square + delta-xywh [R]
    # TAP, the task-aligned predictor (prob map M, offsets O) on the parallel head, fed by the last layer
    # of its two towers [P Table 2 "TAL + TAP" and its note]; the T-Head always has it (issue 20)
    tap: bool = False

    def __post_init__(self):
        if self.tap and self.head != "parallel":
            raise ConfigError(
                f"model.tap: true needs model.head: parallel (got {self.head!r}; the T-Head has M and O)"
            )
        if not self.pretrained.strip():
            raise ConfigError("model.pretrained: '' is empty; use none, imagenet or a checkpoint path")
        _check_range(self, "frozen_stages", lo=-1, hi=4)
        _check_range(self, "fpn_channels", lo=1)
        _check_range(self, "stacked_convs", lo=1)
        _check_range(self, "la_reduction", lo=1)
        _check_range(self, "gn_groups", lo=1)
        if self.fpn_channels % self.gn_groups:
            raise ConfigError(
                f"model.gn_groups: {self.gn_groups} must divide model.fpn_channels ({self.fpn_channels})"
            )


@dataclass(frozen=True)
class AssignConfig:
    # assigner after the warm-up: TAL, ATSS or one of Table 2's fixed schemes (issue 20; model/assigners.py):
    # max_iou (RetinaNet), fovea (FoveaBox's centre region), fcos (FCOS: inside the box, by regression range)
    assigner: Literal["tal", "atss", "max_iou", "fovea", "fcos"] = "tal"
    alpha: float = 1.0  # TAL exponent on the class score (Eq. 9); reference 1.0 [P Table 4]
    beta: float = 6.0  # TAL exponent on the IoU (Eq. 9); reference 6.0
    topk: int = 13  # TAL top-m candidates per GT over all levels [P §4.1]
    atss_topk: int = 9  # ATSS candidates per level [R]
    warmup_epochs: int = (
        4  # ATSS assigner + focal loss for the first epochs: official `initial_epoch`, not in paper
    )
    # max_iou: anchor-box IoU >= pos positive, < neg negative, between ignored; each GT's best anchors are
    # positive when their IoU >= min_pos [mmdet retinanet_r50_fpn.py: MaxIoUAssigner(0.5, 0.4, min_pos_iou=0)]
    max_iou_pos: float = 0.5
    max_iou_neg: float = 0.4
    max_iou_min_pos: float = 0.0
    # fovea: positives in the GT box shrunk by sigma about its centre, on the levels whose range holds
    # sqrt(w*h) [mmdet fovea_r50_fpn_4x4_1x_coco.py: sigma 0.4, scale_ranges below, px of the input image]
    fovea_sigma: float = 0.4
    fovea_scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 64),
        (32, 128),
        (64, 256),
        (128, 512),
        (256, 2048),
    )
    # fcos: level l keeps the points whose largest distance to the GT's sides is in
    # [bounds[l-1], bounds[l]] (from -1 below P3, to infinity above P7) [mmdet FCOSHead regress_ranges]
    fcos_range_bounds: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)

    def __post_init__(self):
        _check_range(self, "alpha", lo=0.0)
        _check_range(self, "beta", lo=0.0)
        _check_range(self, "topk", lo=1)
        _check_range(self, "atss_topk", lo=1)
        _check_range(self, "warmup_epochs", lo=0)
        _check_range(self, "max_iou_pos", lo=0.0, hi=1.0)
        _check_range(self, "max_iou_neg", lo=0.0, hi=1.0)
        _check_range(self, "max_iou_min_pos", lo=0.0, hi=1.0)
        _check_range(self, "fovea_sigma", lo=0.0, hi=1.0, lo_open=True)
        if self.max_iou_neg > self.max_iou_pos:
            raise ConfigError(
                f"assign.max_iou_neg: {self.max_iou_neg} is above assign.max_iou_pos ({self.max_iou_pos})"
            )
        if len(self.fovea_scale_ranges) != 5:
            raise ConfigError(
                f"assign.fovea_scale_ranges: {_plain(self.fovea_scale_ranges)}; one [low, high] per P3-P7"
            )
        if len(self.fcos_range_bounds) != 4:
            raise ConfigError(
                f"assign.fcos_range_bounds: {_plain(self.fcos_range_bounds)}; one per boundary of P3-P7 (4)"
            )
        if any(lo > hi for lo, hi in self.fovea_scale_ranges):
            raise ConfigError(
                f"assign.fovea_scale_ranges: {_plain(self.fovea_scale_ranges)}; each is [low, high]"
            )
        if list(self.fcos_range_bounds) != sorted(self.fcos_range_bounds):
            raise ConfigError(f"assign.fcos_range_bounds: {_plain(self.fcos_range_bounds)}; must increase")


@dataclass(frozen=True)
class LossConfig:
    cls_weight: float = 1.0  # [R]
    box_weight: float = 2.0  # GIoU weight [R]
    focal_alpha: float = 0.25  # warm-up / ATSS focal loss [R]
    focal_gamma: float = 2.0
    qfl_beta: float = 2.0  # exponent on |t_hat - s| in the task-aligned cls loss (Eq. 11 gamma) [R]
    # class target of a fixed scheme's positives (Table 2's "Weight" column, issue 20): "hard" = 1 with focal
    # loss; "iou" = the IoU of the predicted box with its GT under QFL, box loss weighted by the score and no
    # centerness (GFL [mmdet GFLHead], "ATSS + QFL"). TAL's target is always t_hat.
    cls_target: Literal["hard", "iou"] = "hard"

    def __post_init__(self):
        for name in ("cls_weight", "box_weight", "focal_gamma", "qfl_beta"):
            _check_range(self, name, lo=0.0)
        _check_range(self, "focal_alpha", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = (
        0.01  # at base_batch; scaled linearly with the global batch [R: 0.01 at 16, overriding mmdet's 0.02]
    )
    base_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500  # linear warm-up [R]
    warmup_ratio: float = 0.001  # start factor of the warm-up [R]
    steps: tuple[int, ...] = (8, 11)  # lr x0.1 after these epochs [R: 1x schedule]
    gamma: float = 0.1
    grad_clip: float = 0.0  # 0 = off (reference has none)

    def __post_init__(self):
        _check_range(self, "lr", lo=0.0, lo_open=True)
        _check_range(self, "base_batch", lo=1)
        _check_range(self, "momentum", lo=0.0, hi=1.0)
        _check_range(self, "weight_decay", lo=0.0)
        _check_range(self, "warmup_iters", lo=0)
        _check_range(self, "warmup_ratio", lo=0.0, hi=1.0)
        _check_range(self, "gamma", lo=0.0, hi=1.0)
        _check_range(self, "grad_clip", lo=0.0)
        if any(s < 0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ConfigError(
                f"optim.steps: {list(self.steps)}; must be non-negative epochs in increasing order"
            )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 16  # global batch (summed over ranks)
    num_workers: int = 0  # DataLoader workers; 0 decodes in the main process
    cache_images: bool = False  # decode the whole (small) train set into memory once
    # autocast for backbone+head; assignment and losses stay fp32. Not "off": `dvc exp run -S` drops the
    # quotes when it rewrites params.yaml and YAML 1.1 reads a bare off as False. "auto": bf16 on CUDA and
    # on CPUs with native bf16, else fp32 (tood.engine.runtime.resolve_amp; a capability rule, never a timing).
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    num_threads: int = 0  # torch intra-op threads, 0 = torch default
    log_every: int = 10  # iterations between MLflow metric logs

    def __post_init__(self):
        _check_range(self, "epochs", lo=1)
        _check_range(self, "batch_size", lo=1)
        _check_range(self, "num_workers", lo=0)
        _check_range(self, "num_threads", lo=0)
        _check_range(self, "log_every", lo=1)


@dataclass(frozen=True)
class EvalConfig:
    score_thr: float = 0.05  # [R test_cfg]
    nms_iou: float = 0.6
    nms_pre: int = 1000  # top-k per level before NMS
    max_per_img: int = 100
    batch_size: int = 8
    # Budget curve (issue 16; tood/engine/curve.py): the training run measures AP of its current weights
    # after every `curve_every_epochs`-th epoch and after the last (0: off), on the first `curve_max_images`
    # val images (0: the evaluate stage's images). Measurement only: not in the run's key, never trained on.
    curve_every_epochs: int = 2
    curve_max_images: int = 0

    def __post_init__(self):
        _check_range(self, "score_thr", lo=0.0, hi=1.0)
        _check_range(self, "nms_iou", lo=0.0, hi=1.0)
        _check_range(self, "nms_pre", lo=1)
        _check_range(self, "max_per_img", lo=1)
        _check_range(self, "batch_size", lo=1)
        _check_range(self, "curve_every_epochs", lo=0)
        _check_range(self, "curve_max_images", lo=0)


@dataclass(frozen=True)
class LocalExecutorConfig:
    """`executor.local`: a train stage's (variant, seed) runs as processes on this machine, `jobs` at once.

    auto (tood.engine.executor.local_plan): jobs = min(usable cores, the stage's runs), threads_per_run =
    cores // jobs (a last, partial wave of r runs: cores // r). It prefers processes to threads because two
    1-thread runs at once trained 1.35x the images of one 2-thread run on our 2-core Xeon (bench/RESULTS.md
    §7). A rule, never a timing: the thread count changes CPU numerics, so one machine and one params.yaml
    always give a run the same one.
    """

    jobs: int | Literal["auto"] = "auto"
    threads_per_run: int | Literal["auto"] = "auto"

    def __post_init__(self):
        for name in ("jobs", "threads_per_run"):
            if getattr(self, name) != "auto":
                _check_range(self, name, lo=1)


@dataclass(frozen=True)
class SlurmExecutorConfig:
    """`executor.slurm`: one Slurm job array per train stage through submitit (one task per seed)."""

    partition: str = ""  # "" = the cluster's default partition
    time_min: int = 720  # wall-time limit of one task, minutes; a timed-out task is requeued and resumes
    cpus_per_task: int = 8  # also the run's torch intra-op threads (train.num_threads)
    gpus_per_run: int = 0  # 0: a CPU run; >1: torchrun/DDP inside the task, one process per GPU
    mem_gb: int = 0  # 0 = the partition's default
    max_requeues: int = 3  # preemptions / time-outs a task may be requeued after (submitit max_num_timeout)
    sbatch: tuple[str, ...] = ()  # extra sbatch options as "key=value", e.g. "account=mylab", "qos=normal"

    def __post_init__(self):
        _check_range(self, "time_min", lo=1)
        _check_range(self, "cpus_per_task", lo=1)
        _check_range(self, "gpus_per_run", lo=0)
        _check_range(self, "mem_gb", lo=0)
        _check_range(self, "max_requeues", lo=0)
        for option in self.sbatch:
            key, sep, _ = option.partition("=")
            if not sep or not key.strip() or key.startswith("-"):
                raise ConfigError(
                    f"executor.slurm.sbatch: {option!r} should be key=value without dashes, e.g. account=mylab"
                )


@dataclass(frozen=True)
class ExecutorConfig:
    """`executor`: where a train stage's runs execute. Not a training setting: no stage lists it in
    dvc.yaml, so switching local <-> slurm re-runs nothing and leaves dvc.lock as it is."""

    kind: Literal["local", "slurm"] = "local"
    local: LocalExecutorConfig = field(default_factory=LocalExecutorConfig)
    slurm: SlurmExecutorConfig = field(default_factory=SlurmExecutorConfig)


@dataclass(frozen=True)
class StatsConfig:
    """`stats`: how tabulate judges a contrast (tood/report/stats.py). Declared before looking at the verdicts.

    alpha: the family-wise error rate of reproduces/contradicts (Holm over a family of claims) and the level of
      each TOST (equivalent: its (1 - 2 alpha) CI inside +-margin_ap).
    margin_ap: the equivalence margin in AP (0-100), for AP contrasts only.
    power / ci_halfwidth_ap: what the seed plan aims at: seeds a side for `power` at the paper's delta, and for
      a 95% CI half-width <= ci_halfwidth_ap.
    replications: folders of metrics files (`<variant>.json`, as evaluate_variant writes them) for some of the
      grid's variants measured again in another setting: another precision (`python -m bench.precision
      --out DIR`), another CPU or more seeds, with the grid's data, model and budget. Every contrast a folder
      holds both sides of is judged again there, in its family (tood.report.results.Replication).
    """

    alpha: float = 0.05
    margin_ap: float = 0.5
    power: float = 0.8
    ci_halfwidth_ap: float = 1.0
    replications: tuple[str, ...] = ()

    def __post_init__(self):
        _check_range(self, "alpha", lo=0.0, hi=0.25, lo_open=True)
        _check_range(self, "margin_ap", lo=0.0, lo_open=True)
        _check_range(self, "power", lo=0.5, hi=0.99)
        _check_range(self, "ci_halfwidth_ap", lo=0.0, lo_open=True)


def load_stats_config(params: dict[str, Any], where: str = "params") -> StatsConfig:
    """The validated `stats` section (defaults where it is absent)."""
    return from_dict(StatsConfig, params.get("stats") or {}, where, "stats")


def load_executor_config(params: dict[str, Any], where: str = "params") -> ExecutorConfig:
    """The validated `executor` section (defaults where it is absent)."""
    return from_dict(ExecutorConfig, params.get("executor") or {}, where, "executor")


@dataclass(frozen=True)
class RunConfig:
    variant: str
    seeds: tuple[int, ...] = (0,)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        _check_seeds(self.seeds, "seeds")
        if self.loss.cls_target == "iou" and self.assign.assigner == "tal":
            raise ConfigError(
                f"loss.cls_target: 'iou' is for the fixed assigners (atss, max_iou, fovea, fcos), not for "
                f"{self.assign.assigner!r}: TAL trains the class score towards t_hat"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every resolved hyperparameter as {"model.head": "tood", ...} (for MLflow params)."""
        return _flatten(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a resolved config written by `save` (round-trips to an equal object)."""
        return from_dict(cls, json.loads(Path(path).read_text()), str(path))


def resolve_repo_path(path: str | Path) -> Path:
    """A relative path is relative to the DVC repo root ($DVC_ROOT; queued `dvc exp` runs execute in
    temporary copies of the repo, so all of them share the main checkout's data and backbone) or the CWD."""
    path = Path(path)
    return path if path.is_absolute() else Path(os.environ.get("DVC_ROOT") or os.getcwd()) / path


resolve_data_root = resolve_repo_path  # data.root is the main user of this rule


_SECTIONS = ("shapes", "pretrain", "data", "model", "assign", "loss", "optim", "train", "eval")
_TOP_LEVEL = {"alpha", "beta", "seeds", "trial", "headline", "variants", "executor", "stats", *_SECTIONS}


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key '{unknown[0]}'{_did_you_mean(unknown[0], _TOP_LEVEL)}; "
            f"allowed: {sorted(_TOP_LEVEL)}"
        )
    return params


def _did_you_mean(key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: PyYAML's own message spans several lines (context, problem, position)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or str(e).splitlines()[0])


def variant_names(params: dict[str, Any]) -> list[str]:
    """The headline variant followed by every ablation variant, in params.yaml order."""
    return [HEADLINE, *(params.get("variants") or {})]


def load_run_config(path: str | Path, variant: str) -> RunConfig:
    """Merge the shared sections of params.yaml with one variant's overrides and validate them."""
    params = load_params(path)
    return resolve_run_config(params, variant, where=str(path))


def resolve_run_config(params: dict[str, Any], variant: str, where: str = "params") -> RunConfig:
    variants = params.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"{where}: variants must be a mapping of name -> overrides")
    for name in variants:
        if not _VARIANT_NAME.fullmatch(str(name)):
            raise ConfigError(
                f"{where}: variants.{name}: invalid variant name; use letters, digits, '_' and '-' only "
                "(DVC reads a '.' in `variants.<name>` as a nested key, e.g. write a05_b2, not a0.5_b2)"
            )
    if HEADLINE in variants:
        raise ConfigError(
            f"{where}: variants.{HEADLINE}: '{HEADLINE}' is the headline; configure it under `headline`"
        )
    if variant == HEADLINE:
        overrides, key_prefix = dict(params.get("headline") or {}), "headline"
        for k in ("alpha", "beta"):
            if k in overrides:
                raise ConfigError(
                    f"{where}: headline.{k}: set the top-level `{k}` instead (it drives this run)"
                )
            overrides[k] = _top_level_exponent(params, k, where)
    elif variant in variants:
        overrides, key_prefix = dict(variants[variant] or {}), f"variants.{variant}"
    else:
        raise ConfigError(f"{where}: unknown variant '{variant}'; known: {variant_names(params)}")

    seeds = _variant_seeds(params, overrides, where, key_prefix)
    schedule = _variant_schedule(overrides, where, key_prefix)
    sections = {name: dict(params.get(name) or {}) for name in _SECTIONS}
    routed = {}  # "assign.alpha" -> "variants.a05_b2.alpha": where each override lands, and where it was written
    for key, value in overrides.items():
        section = _OVERRIDE_SECTION.get(key)
        if section is None:
            raise _unknown_override(where, key_prefix, key, {*_OVERRIDE_SECTION, "seeds", "schedule"})
        sections[section][key] = value
        routed[f"{section}.{key}"] = f"{key_prefix}.{key}"
    if schedule is not None:
        _scale_schedule(sections, schedule, where, f"{key_prefix}.schedule")
    raw = {"variant": variant, "seeds": seeds, **sections}
    try:
        return from_dict(RunConfig, raw, where)
    except ConfigError as e:
        raise ConfigError(_rename_keys(str(e), routed)) from None


# The sections a variant may override, by key: model/assign switches and (issue 20) the loss pairing. Their
# key names do not overlap, so a flat key names its section.
_OVERRIDE_SECTION = {
    **{f.name: "model" for f in dataclasses.fields(ModelConfig)},
    **{f.name: "assign" for f in dataclasses.fields(AssignConfig)},
    **{f.name: "loss" for f in dataclasses.fields(LossConfig)},
}


def _variant_schedule(overrides: dict[str, Any], where: str, key_prefix: str) -> float | None:
    """A variant's `schedule: 1.5` (popped from its overrides): train for that multiple of train.epochs."""
    if "schedule" not in overrides:
        return None
    key = f"{key_prefix}.schedule"
    if key_prefix == "headline":
        raise ConfigError(f"{where}: {key}: the headline trains the shared `train.epochs`; use a variant")
    value = _convert(float, overrides.pop("schedule"), where, key)
    if value <= 0:
        raise ConfigError(f"{where}: {key}: {value!r} is out of range; must be > 0")
    return value


def _scale_schedule(sections: dict[str, dict], schedule: float, where: str, key: str) -> None:
    """train.epochs x schedule and every optim.steps epoch x schedule, rounded down, as mmdetection's longer
    schedules scale the 1x one (PAA's 1.5x: 18 epochs, steps [12, 16] from 12 and [8, 11]; the paper's
    Table 2 rows marked * train 18 epochs). The ATSS warm-up keeps its length: the reference's
    `initial_epoch` is a number of epochs, not a share of them [R]."""
    epochs = _convert(int, sections["train"].get("epochs", TrainConfig.epochs), where, "train.epochs")
    steps = _convert(tuple[int, ...], sections["optim"].get("steps", OptimConfig.steps), where, "optim.steps")
    scaled = epochs * schedule
    if abs(scaled - round(scaled)) > 1e-9:
        raise ConfigError(
            f"{where}: {key}: {schedule:g} x train.epochs ({epochs}) = {scaled:g} is not a whole number"
        )
    sections["train"]["epochs"] = round(scaled)
    sections["optim"]["steps"] = [int(s * schedule + 1e-9) for s in steps]


def _unknown_override(where: str, key_prefix: str, key: Any, allowed: set[str]) -> ConfigError:
    """A variant key no variant may hold. A section name (`train:` inside a variant) gets no "did you mean":
    difflib pairs `train` with `pretrained`, which sends the user to the wrong key (issue 18)."""
    if key in _TOP_LEVEL:
        hint = f" (`{key}` is a shared top-level section; a variant cannot override it)"
    else:
        close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: {key_prefix}.{key}: unknown override{hint}; allowed: {sorted(allowed)}")


def _rename_keys(message: str, routed: dict[str, str]) -> str:
    """Name an override's error where the user wrote it (`variants.a05_b2.alpha: -2.0 is out of range`), not
    under the section it is merged into (`assign.alpha`), where the user would find only valid values."""
    for merged, written in routed.items():
        message = re.sub(rf"(?<![\w.]){re.escape(merged)}(?=[:\[ ])", written, message)
    return message


def _top_level_exponent(params: dict[str, Any], key: str, where: str) -> float:
    """Top-level `alpha`/`beta`, checked by AssignConfig's own type and range rules but named as the user
    wrote them (`alpha: -1` is reported as `alpha`, not as the `assign.alpha` it is copied into)."""
    if key not in params:
        raise ConfigError(f"{where}: top-level `{key}` is missing; it drives the headline TOOD run")
    try:
        return getattr(from_dict(AssignConfig, {key: params[key]}, where), key)
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"assign.{key}:", f"{key}:", 1)) from None


def _variant_seeds(params: dict[str, Any], overrides: dict[str, Any], where: str, key_prefix: str) -> Any:
    """The top-level `seeds`, or a variant's own `seeds: [...]` (popped from its overrides).

    The headline keeps the top-level list: it is in the main contrasts (Tables 3, 6) and is Table 4's
    reference cell, so it always gets the full count.
    """
    if "seeds" not in overrides:
        return params.get("seeds", [0])  # checked with the rest of RunConfig
    if key_prefix == "headline":
        raise ConfigError(f"{where}: headline.seeds: set the top-level `seeds` instead (it drives this run)")
    seeds = _convert(tuple[int, ...], overrides.pop("seeds"), where, f"{key_prefix}.seeds")
    try:
        _check_seeds(seeds, f"{key_prefix}.seeds")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return seeds


def _check_seeds(seeds: tuple[int, ...], key: str) -> None:
    if not seeds:
        raise ConfigError(f"{key}: [] is empty; give at least one integer seed")
    if len(set(seeds)) != len(seeds):  # a repeated seed would be averaged in twice
        raise ConfigError(f"{key}: {list(seeds)} repeats a seed; list each seed once")


# ---------------------------------------------------------------------------------------------------
# strict dict -> dataclass conversion


def from_dict(cls: type, raw: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and wrong types with the key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix or cls.__name__}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"{where}: {key}: unknown key{_did_you_mean(unknown[0], names)}; allowed: {sorted(names)}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, where, key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: {key}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: {value!r} should be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: {key}: {list(value)} should have {len(args)} entries")
        return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _convert(a, value, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key}: {value!r} should be {' or '.join(_describe(a) for a in args)}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: {value!r} should be a number")
        return float(value)  # `-S alpha=1` writes an int; store 1.0 so runs compare equal
    if tp is bool or tp is int or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{where}: {key}: {value!r} should be {tp.__name__}")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def _describe(tp: Any) -> str:
    """A type as an error message names it: int -> "an int", Literal["auto"] -> "'auto'"."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _plain(value: Any) -> Any:
    """Nested tuples as the lists params.yaml writes them, for error messages."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _check_range(obj: Any, name: str, lo=None, hi=None, lo_open: bool = False) -> None:
    value = getattr(obj, name)
    section = _SECTION_OF.get(type(obj).__name__, type(obj).__name__)
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        allowed = " and ".join(s for s in (lo_s, hi_s) if s)
        raise ConfigError(f"{section}.{name}: {value!r} is out of range; must be {allowed}")


_SECTION_OF = {
    "ShapesConfig": "shapes",
    "PretrainConfig": "pretrain",
    "DataConfig": "data",
    "ModelConfig": "model",
    "AssignConfig": "assign",
    "LossConfig": "loss",
    "OptimConfig": "optim",
    "TrainConfig": "train",
    "EvalConfig": "eval",
    "LocalExecutorConfig": "executor.local",
    "SlurmExecutorConfig": "executor.slurm",
    "StatsConfig": "stats",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
