"""The offline stand-in for ImageNet: pretrain the ResNet body on a shape-crop classification task, once.

The paper fine-tunes an ImageNet-pretrained backbone (stem and stage 1 frozen, BN frozen) for 12 epochs
[P §4, R: tood_r50_fpn_1x_coco.py]. ImageNet cannot be downloaded here, and 12 epochs from scratch learn
almost nothing (AP ~2 for ours and for mmdetection alike), so the `pretrain` stage makes our own: the
torchvision ResNet of `model.depth` plus a linear classifier learns to tell the 12 shape kinds apart on
crops drawn by tood.data.shapes.render_crop (the detection set's backgrounds, fills, clutter and distractors,
its own seed stream: no detection image is ever drawn). The task knows nothing of heads, assigners or
anchors, so every variant and seed of the grid fine-tunes from the same checkpoint, as every paper row
starts from the same ImageNet weights.

Recipe (a small-scale version of torchvision's classification reference): SGD with momentum, linear
warm-up then cosine decay, weight decay on every parameter, horizontal flips, trainable BatchNorm (the
detector later freezes its statistics, as mmdet's norm_eval does with ImageNet's).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from tood.config import PretrainConfig
from tood.data.shapes import KINDS, render_crop
from tood.progress import progress

# torchvision ResNet builders by depth (the detector's backbone uses the same ones: tood.model.backbone)
_DEPTHS = (18, 34, 50, 101)


@dataclass
class CropSet:
    images: Tensor  # (N, 3, S, S) uint8 RGB
    labels: Tensor  # (N,) int64 in [0, num_classes)


def make_crops(cfg: PretrainConfig, split: str, jpeg_quality: int) -> CropSet:
    """Render the split's crops (train: indices [0, num_train), val: the next num_val) through a JPEG
    round-trip at the detection set's quality, so pretraining sees the same compression artefacts."""
    start, count = (0, cfg.num_train) if split == "train" else (cfg.num_train, cfg.num_val)
    images = torch.empty(count, 3, cfg.crop_size, cfg.crop_size, dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.long)
    for i in progress(range(count), desc=f"pretrain: render {split} crops", unit="crop"):
        pixels, labels[i] = render_crop(cfg.seed, start + i, cfg.crop_size, cfg.num_classes)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=jpeg_quality, subsampling=0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"))  # (S, S, 3)
        images[i] = torch.from_numpy(decoded.copy()).permute(2, 0, 1)
    return CropSet(images, labels)


def build_classifier(depth: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-<depth> with a num_classes-way fc; its body is what the detector loads."""
    from torchvision import models

    if depth not in _DEPTHS:
        raise ValueError(f"ResNet depth {depth} not supported; choose one of {_DEPTHS}")
    return getattr(models, f"resnet{depth}")(weights=None, num_classes=num_classes)


def lr_at(step: int, total: int, cfg: PretrainConfig) -> float:
    """Linear warm-up from 0 over cfg.warmup_iters, then cosine decay to 0 at `total` steps."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(total - cfg.warmup_iters, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def normalise(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool) -> Tensor:
    x = (images.float() - mean) / std  # (B, 3, S, S)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def accuracy(
    model: nn.Module, crops: CropSet, mean: Tensor, std: Tensor, *, batch_size: int, amp, cl
) -> float:
    """Top-1 accuracy of `model` (eval mode) on `crops`."""
    model.eval()
    correct = 0
    for i in range(0, len(crops.labels), batch_size):
        x = normalise(crops.images[i : i + batch_size], mean, std, cl)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            correct += int((model(x).argmax(1) == crops.labels[i : i + batch_size]).sum())
    return correct / len(crops.labels)


def train_classifier(
    cfg: PretrainConfig,
    depth: int,
    train: CropSet,
    val: CropSet,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    amp: torch.dtype | None,
    channels_last: bool,
    log=None,
) -> tuple[nn.Module, dict]:
    """Train the classifier for cfg.epochs over `train`; returns it and {top1_val, top1_train, ...}.

    `log(step, {name: value})` receives the mean loss and lr every 20 steps and val accuracy per epoch.
    """
    torch.manual_seed(cfg.seed)
    model = build_classifier(depth, cfg.num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    steps_per_epoch = len(train.labels) // cfg.batch_size  # drop_last: every step sees a full batch
    total, step, start = cfg.epochs * steps_per_epoch, 0, time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    bar = progress(total=total, desc="pretrain", unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)  # (N,)
        flips = torch.rand(len(train.labels), generator=generator) < 0.5  # (N,)
        for k in range(steps_per_epoch):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            images = torch.where(flips[idx, None, None, None], train.images[idx].flip(-1), train.images[idx])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                logits = model(normalise(images, mean_t, std_t, channels_last))  # (B, K)
            loss = F.cross_entropy(logits.float(), train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))  # sync point, once per step
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{np.mean(history[-20:]):.3f}")
            if log is not None and step % 20 == 0:
                log(
                    step,
                    {"pretrain/loss": float(np.mean(history[-20:])), "pretrain/lr": lr_at(step, total, cfg)},
                )
        top1 = accuracy(model, val, mean_t, std_t, batch_size=256, amp=amp, cl=channels_last)
        if log is not None:
            log(step, {"pretrain/top1_val": top1, "pretrain/epoch": epoch + 1})
    bar.close()
    summary = {
        "top1_val": accuracy(model, val, mean_t, std_t, batch_size=256, amp=amp, cl=channels_last),
        "top1_train": accuracy(model, train, mean_t, std_t, batch_size=256, amp=amp, cl=channels_last),
        "final_loss": float(np.mean(history[-steps_per_epoch:])) if history else math.nan,
        "steps": step,
        "train_time_s": time.perf_counter() - start,
        "chance": 1.0 / cfg.num_classes,
    }
    return model, summary


def backbone_state_dict(classifier: nn.Module) -> dict[str, Tensor]:
    """The classifier's weights without the fc: exactly the keys torchvision's ResNet body has."""
    return {k: v.detach().clone() for k, v in classifier.state_dict().items() if not k.startswith("fc.")}


def class_names(num_classes: int) -> list[str]:
    return [KINDS[k].name for k in range(num_classes)]


def save_backbone(path: Path, classifier: nn.Module, depth: int, cfg: PretrainConfig, summary: dict) -> None:
    """The checkpoint tood.model.backbone loads: {"state_dict", "depth", "class_names", "summary", "config"}."""
    import dataclasses

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "state_dict": backbone_state_dict(classifier),
        "depth": depth,
        "class_names": class_names(cfg.num_classes),
        "summary": summary,
        "config": dataclasses.asdict(cfg),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
