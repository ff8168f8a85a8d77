"""Where a training step's time goes: data, backbone+FPN, head, assignment, loss, backward, optimizer.

The step is tood.engine.loop.train_step + Detector.compute_loss taken apart, with the same calls in the same
order and a timestamp between phases (after torch.cuda.synchronize on CUDA):
  data          next batch from the loader, moved to the device (+ channels_last), GTs included
  backbone+fpn  detector.backbone(images), under autocast when --amp is bf16/fp16
  head          detector.head(feats, Detector.priors_for(feats)), same autocast
  assign        fp32 from here on: priors_for_image_size + choose_assigner -> tal_assign / atss_assign
  loss          tal_loss / atss_loss, their sum, and train_step's finiteness read-out (`.tolist()`, its
                one sync point)
  backward      zero_grad + (scaled) loss.backward()
  optimizer     (grad clip when optim.grad_clip > 0) + SGD step through the GradScaler
Models, optimizer and scaler come from tood.engine.train.build_state, the lr from tood.engine.loop.schedule_lr.

Settings (--setting):
  default  the headline `tood` variant of params.yaml (tood.config.load_run_config), the real shapes train
           split (data/shapes, from `dvc repro data`) through tood.engine.loop.train_loader, batch 16
           (train.batch_size; cache_images is preloaded first, as a run pays it once).
  r50      the COCO recipe's model (profiles/coco.yaml: R-50, FPN 256, T-Head, 80 classes) with
           `pretrained: none`: ImageNet weights cannot be downloaded here, and the values of the weights
           do not change the work done. profiles/coco.yaml's `norm: frozen_bn` is kept, so every backbone
           BN is a FrozenBatchNorm2d, the recipe's per-channel affine (an identity one from scratch; same
           cost). Because tood.model.backbone only freezes stages when pretrained, --freeze recipe (the default
           here) sets requires_grad off for the stem + the first `frozen_stages` stages, as the recipe has
           them; --freeze none trains the whole backbone. --norm bn measures trainable BatchNorm instead,
           whose batch statistics cost more in forward and backward. The data are SYNTHETIC: per image
           N(0,1) pixels at the 1333x800 resize of a landscape image (800 x 1333), zero-padded to
           800 x 1344, and 7 random GT boxes (COCO's mean per image) over 80 classes; `data` is the time
           to build that batch and move it, not JPEG decoding.
Any config with pretrained weights (`model.pretrained` not none) (r50's profile; the default setting with --pretrained) is built
from scratch and frozen as above (--freeze recipe), so it does the pretrained recipe's work without weights.
--phase tal (default) runs an epoch past the ATSS warm-up (epoch = assign.warmup_epochs), --phase atss
the warm-up itself (epoch 0). The first --warmup steps are not timed.

    .venv/bin/python -m bench.step_breakdown --setting default --steps 10 --warmup 2 --threads 2
    .venv/bin/python -m bench.step_breakdown --setting r50 --batch 2 --steps 3 --warmup 1 --threads 2
    .venv/bin/python -m bench.step_breakdown --setting r50 --device cuda --batch 16 --amp bf16 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from bench.common import PhaseClock, choose_device, cpu_summary, print_table, setting_line, write_json
from tood.config import HEADLINE, ModelConfig, RunConfig, load_params, resolve_data_root, resolve_run_config
from tood.data.dataset import Batch, build_dataset
from tood.engine.loop import TrainState, schedule_lr, set_loader_epoch, train_loader
from tood.engine.runtime import AMP_DTYPES, seed_everything
from tood.engine.train import build_state
from tood.model.assigners import choose_assigner
from tood.model.backbone import NO_WEIGHTS
from tood.model.detector import Detector
from tood.model.heads import HeadOutput

PHASES = ("data", "backbone+fpn", "head", "assign", "loss", "backward", "optimizer")
COCO_CLASSES = 80
COCO_GTS_PER_IMAGE = 7  # instances_train2017: 860k boxes / 118k images
COCO_TRAIN_IMAGES = 118_287


def load_config(args: argparse.Namespace) -> RunConfig:
    """The setting's RunConfig built by tood.config from the yaml dict, with this run's overrides."""
    path = args.params if args.setting == "default" else args.profile
    params = load_params(path)
    model = dict(params.get("model") or {})
    # frozen like the recipe after building (main); built from scratch: no ImageNet weights here
    args.recipe = args.pretrained or model.get("pretrained", NO_WEIGHTS) != NO_WEIGHTS
    model["pretrained"] = NO_WEIGHTS
    if args.norm is not None:
        if "norm" not in {f.name for f in dataclasses.fields(ModelConfig)}:
            raise SystemExit("--norm: this tood.config.ModelConfig has no `norm` field")
        model["norm"] = args.norm
    params["model"] = model
    cfg = resolve_run_config(params, HEADLINE, where=str(path))
    batch = args.batch or (cfg.train.batch_size if args.setting == "default" else 2)
    train = dataclasses.replace(cfg.train, batch_size=batch, amp=args.amp, channels_last=args.channels_last)
    return dataclasses.replace(cfg, train=train)


def loader_batches(cfg: RunConfig, seed: int, epoch: int) -> tuple[int, int, Iterator[Batch]]:
    """(num_classes, steps per epoch, endless batches) of the real train split, starting at `epoch`."""
    root = resolve_data_root(cfg.data.root)
    if not (root / cfg.data.train_ann).exists():
        raise SystemExit(f"{root / cfg.data.train_ann} is missing: run `dvc repro data` first")
    dataset = build_dataset(cfg, None, train=True)
    if dataset.cache_images:
        dataset.preload()  # once per run in training, so not part of any step
    loader = train_loader(
        dataset, cfg.train.batch_size, seed=seed, rank=0, world=1, workers=cfg.train.num_workers
    )

    def endless() -> Iterator[Batch]:
        for e in itertools.count(epoch):
            set_loader_epoch(loader, seed, e)
            yield from loader

    return dataset.num_classes, len(loader), endless()


def synthetic_batches(cfg: RunConfig, seed: int) -> Iterator[Batch]:
    """Endless synthetic COCO-recipe batches: (B, 3, 800, 1344) images, 7 GTs per image, 80 classes."""
    gen = torch.Generator().manual_seed(seed)
    B, G, div = cfg.train.batch_size, COCO_GTS_PER_IMAGE, cfg.data.size_divisor
    W, H = max(cfg.data.img_scale), min(cfg.data.img_scale)  # a landscape image at the resize limits
    Hp, Wp = -(-H // div) * div, -(-W // div) * div
    size = torch.tensor([W, H], dtype=torch.float32)
    while True:
        images = torch.zeros(B, 3, Hp, Wp)  # (B, 3, Hp, Wp) zero padding, as tood.data.dataset.collate
        images[:, :, :H, :W] = torch.randn(B, 3, H, W, generator=gen)
        centres = torch.rand(B, G, 2, generator=gen) * size  # (B, G, 2)
        wh = 4 + torch.rand(B, G, 2, generator=gen) * size / 2
        boxes = torch.cat((centres - wh / 2, centres + wh / 2), -1)  # (B, G, 4)
        boxes = torch.minimum(boxes.clamp(min=0), size.repeat(2))
        labels = torch.randint(0, COCO_CLASSES, (B, G), generator=gen)  # (B, G)
        yield Batch(images, boxes, labels, torch.ones(B, G, dtype=torch.bool))


def freeze_like_recipe(detector: Detector, frozen_stages: int) -> None:
    """What tood.model.backbone does with pretrained weights: no gradients for the stem + first stages [R]."""
    body = detector.backbone.body
    frozen = [body.stem, *body.stages[: max(frozen_stages, 0)]] if frozen_stages >= 0 else []
    for module in frozen:
        module.requires_grad_(False)


def timed_step(
    state: TrainState, batches: Iterator[Batch], cfg: RunConfig, device: torch.device, clock: PhaseClock
) -> dict[str, float]:
    """One training step, phase by phase (see the module docstring); returns the loss terms."""
    clock.start()
    batch = next(batches)
    images = batch.images.to(device, non_blocking=True)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    gts = tuple(t.to(device) for t in (batch.gt_boxes, batch.gt_labels, batch.gt_mask))
    clock.lap("data")
    detector, amp_dtype = state.detector, AMP_DTYPES[state.amp]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        feats = detector.backbone(images)
        clock.lap("backbone+fpn")
        out = detector.head(feats, detector.priors_for(feats))
        clock.lap("head")
    with torch.autocast(device.type, enabled=False):
        losses = assign_and_loss(detector, out, gts, tuple(images.shape[-2:]), state.epoch, cfg, clock)
    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
    clock.lap("loss")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(losses["loss"]).backward()
    clock.lap("backward")
    if cfg.optim.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.detector.parameters(), cfg.optim.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    clock.lap("optimizer")
    return values


def assign_and_loss(
    detector: Detector, out: HeadOutput, gts: tuple, image_size: tuple, epoch: int, cfg: RunConfig, clock
) -> dict:
    """Detector.compute_loss's two halves with a lap between them; gts = (gt_boxes, gt_labels, gt_mask)."""
    out = HeadOutput(scores=out.scores.float(), boxes=out.boxes.float(), centerness=out.centerness)
    phase, assignment = detector.assign(out, *gts, image_size, epoch=epoch, assign_cfg=cfg.assign)
    clock.lap("assign")
    return detector.losses(out, phase, assignment, image_size, cfg.loss)


def describe_backbone(detector: Detector) -> str:
    frozen_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in detector.backbone.modules())
    bn = sum(isinstance(m, nn.BatchNorm2d) for m in detector.backbone.modules())
    trainable = sum(p.numel() for p in detector.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in detector.parameters() if not p.requires_grad)
    return (
        f"backbone norm layers: {frozen_bn} FrozenBatchNorm2d, {bn} BatchNorm2d; "
        f"parameters: {trainable / 1e6:.2f} M trainable, {frozen / 1e6:.2f} M frozen"
    )


def report(args: argparse.Namespace, cfg: RunConfig, per_step: list[dict[str, float]], notes: dict) -> None:
    mean_ms = {p: 1000 * statistics.fmean(s[p] for s in per_step) for p in PHASES}
    step_ms = sum(mean_ms.values())
    rows = [[p, f"{mean_ms[p]:.1f}", f"{100 * mean_ms[p] / step_ms:.1f}"] for p in PHASES]
    rows.append(["step", f"{step_ms:.1f}", "100.0"])
    print_table(["phase", "ms/step (mean)", "share %"], rows)
    assign_loss = 100 * (mean_ms["assign"] + mean_ms["loss"]) / step_ms
    images_per_s = 1000 * cfg.train.batch_size / step_ms
    print(f"assignment + loss = {assign_loss:.1f}% of a step")
    print(f"images/s = {images_per_s:.2f} (batch {cfg.train.batch_size}, {len(per_step)} timed steps)")
    figures = {
        **notes,
        "mean_ms": mean_ms,
        "step_ms": step_ms,
        "share_pct": {p: 100 * mean_ms[p] / step_ms for p in PHASES},
        "assign_plus_loss_pct": assign_loss,
        "images_per_s": images_per_s,
        "per_step_ms": [{p: 1000 * s[p] for p in PHASES} for s in per_step],
    }
    write_json(args.json, figures)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["default", "r50"], default="default")
    parser.add_argument("--phase", choices=["tal", "atss"], default="tal", help="TAL epochs or ATSS warm-up")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (default), 2 (r50)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--norm", choices=["bn", "frozen_bn"], default=None, help="default: the yaml's")
    parser.add_argument("--freeze", choices=["recipe", "none"], default="recipe", help="pretrained configs")
    parser.add_argument("--pretrained", action="store_true", help="the pretrained recipe's frozen stages")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="default setting")
    parser.add_argument("--profile", type=Path, default=Path("profiles/coco.yaml"), help="r50 setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    cfg = load_config(args)
    epoch = cfg.assign.warmup_epochs if args.phase == "tal" else 0
    if choose_assigner(cfg.assign.assigner, epoch, cfg.assign.warmup_epochs) != args.phase:
        raise SystemExit(f"--phase {args.phase}: the `tood` variant never runs that assigner")
    seed_everything(args.seed)
    if args.setting == "default":
        num_classes, steps_per_epoch, batches = loader_batches(cfg, args.seed, epoch)
    else:
        num_classes, steps_per_epoch = COCO_CLASSES, COCO_TRAIN_IMAGES // cfg.train.batch_size
        batches = synthetic_batches(cfg, args.seed)
    state = build_state(cfg, num_classes, device, 1, None)
    if args.recipe and args.freeze == "recipe":
        freeze_like_recipe(state.detector, cfg.model.frozen_stages)
    state.model.train()
    state.epoch, state.iteration = epoch, epoch * steps_per_epoch
    data = "real loader" if args.setting == "default" else "SYNTHETIC batches"
    print(setting_line(device))
    print(
        f"setting={args.setting} ({data}) depth={cfg.model.depth} pretrained={cfg.model.pretrained} "
        f"head={cfg.model.head} C={num_classes} batch={cfg.train.batch_size} epoch={epoch} "
        f"assigner={args.phase} amp={cfg.train.amp}->{state.amp} channels_last={cfg.train.channels_last} "
        f"freeze={args.freeze if args.recipe else 'n/a'}"
    )
    print(describe_backbone(state.detector))
    per_step, losses = [], {}
    for i in range(args.warmup + args.steps):
        lr = schedule_lr(cfg.optim, cfg.train.batch_size, state.iteration, state.epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        clock = PhaseClock(device)
        losses = timed_step(state, batches, cfg, device, clock)
        state.iteration += 1
        if i >= args.warmup:
            per_step.append(clock.seconds)
    print("last step's losses: " + ", ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    notes = {"setting": args.setting, "data": data, "phase": args.phase, "epoch": epoch}
    notes |= {"batch": cfg.train.batch_size, "device": str(device), "threads": torch.get_num_threads()}
    notes |= {
        "amp": state.amp,
        "cpu": cpu_summary(),
        "channels_last": cfg.train.channels_last,
        "config": cfg.to_dict(),
    }
    report(args, cfg, per_step, notes)


if __name__ == "__main__":
    main()
