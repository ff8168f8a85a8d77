"""Parameter counts and GFLOPs of a detector, measured from the model itself (the paper's Table 1 columns).

FLOPs come from torch.utils.flop_counter.FlopCounterMode, run on one image. Conventions differ:
    * torch counts 2 FLOPs per multiply-add, and only convolutions and matrix products (here the convs
      and the T-Head's layer-attention bmm);
    * the paper's figures come from mmcv's get_flops (mmdet tools/analysis_tools/get_flops.py), which
      counts 1 FLOP per multiply-add and also counts norms, activations, bias adds and upsampling.
We report GFLOPs in the paper's convention, i.e. torch's count / 2 / 1e9. What torch does not count
(mmcv's element-wise extras; the T-Head's bilinear box sampling, which neither counter sees) makes ours
slightly lower than an mmcv count of the same model.

Parameters follow mmcv's counter too, which counts the parameters that train (requires_grad): when the
backbone starts from pretrained weights, the recipe freezes the stem and the first `frozen_stages` ResNet
stages [R: frozen_stages=1], and those are left out of `params`; `all_params` counts every parameter.

The model is built and run under FakeTensorMode (torch's shape-only tensors, the ones torch.export and
torch.compile trace with): parameters and activations carry shapes but no data, so ResNet-50 at 1280x800
takes about a second and no memory, and no weights are ever loaded (NO_WEIGHTS). The meta device would
do the same but fails here: the FPN opens an autocast region for its input's device type, and autocast
knows no "meta".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from tood.config import DataConfig, ModelConfig, RunConfig
from tood.engine.inference import config_from_checkpoint
from tood.model.backbone import (
    NO_WEIGHTS,  # the `model.pretrained` value that loads nothing: counting never does
)
from tood.model.detector import Detector
from tood.report import paper


def loads_weights(cfg: ModelConfig) -> bool:
    """Whether this config starts the backbone from weights, and so freezes its first stages (tood.model.backbone)."""
    return cfg.pretrained != NO_WEIGHTS


@dataclass(frozen=True)
class Complexity:
    """What Table 1 reports for one model at one input size, plus what it was measured on."""

    head_params: int
    params: int  # trainable under the recipe (mmcv's count): all_params minus the frozen backbone stages
    all_params: int
    head_gflops: float  # multiply-adds / 1e9 (mmcv convention), one image
    gflops: float
    num_classes: int
    input_h: int
    input_w: int
    depth: int
    fpn_channels: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(cfg: ModelConfig, num_classes: int, input_hw: tuple[int, int], frozen_stages: int) -> Complexity:
    """Count the parameters and multiply-adds of Detector(cfg, num_classes) on one (3, H, W) image.

    `frozen_stages` as in tood.model.backbone: -1 freezes nothing, k >= 0 the stem and stages 1..k.
    """
    cfg = dataclasses.replace(cfg, pretrained=NO_WEIGHTS)
    with FakeTensorMode():
        detector = Detector(cfg, num_classes).eval()
        images = torch.empty(1, 3, *input_hw)  # (1, 3, H, W), shapes only
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            detector(images)
    flops = counter.get_flop_counts()  # {module path: {op: FLOPs}}, paths rooted at the class name
    head_key = f"{type(detector).__name__}.head"
    if head_key not in flops:
        raise RuntimeError(f"FlopCounterMode recorded no '{head_key}' module; got {sorted(flops)}")
    all_params = _n_params(detector)
    frozen = _frozen_modules(detector, frozen_stages)
    return Complexity(
        head_params=_n_params(detector.head),
        params=all_params - sum(_n_params(m) for m in frozen),
        all_params=all_params,
        head_gflops=sum(flops[head_key].values()) / 2e9,  # torch: 2 FLOPs per multiply-add
        gflops=counter.get_total_flops() / 2e9,
        num_classes=num_classes,
        input_h=input_hw[0],
        input_w=input_hw[1],
        depth=cfg.depth,
        fpn_channels=cfg.fpn_channels,
    )


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _frozen_modules(detector: Detector, frozen_stages: int) -> list[nn.Module]:
    """The backbone modules the recipe freezes: stem and stages 1..k (tood.model.backbone, mmdet _freeze_stages)."""
    body = detector.backbone.body
    return [body.stem, *body.stages[:frozen_stages]] if frozen_stages >= 0 else []


def paper_config_complexity(head: str, anchor: str) -> Complexity:
    """Our model at the configuration of the paper's Table 1 (tood.report.paper.TABLE1_*), with this head/anchor."""
    cfg = ModelConfig(**paper.TABLE1_MODEL, head=head, anchor=anchor, pretrained=NO_WEIGHTS)
    return measure(cfg, paper.TABLE1_NUM_CLASSES, paper.TABLE1_INPUT_HW, paper.TABLE1_MODEL["frozen_stages"])


def run_input_hw(data: DataConfig) -> tuple[int, int]:
    """The largest padded input the run's resize produces: (short, long) sides of img_scale, each rounded
    up to size_divisor (a keep-ratio resize makes other images smaller along one side)."""
    d = data.size_divisor
    long_side, short_side = max(data.img_scale), min(data.img_scale)
    return -(-short_side // d) * d, -(-long_side // d) * d


def run_complexity(cfg: RunConfig, num_classes: int) -> Complexity:
    """The trained model of a run, as its resolved config describes it, at the run's input size."""
    frozen = cfg.model.frozen_stages if loads_weights(cfg.model) else -1  # the backbone freezes only then
    return measure(cfg.model, num_classes, run_input_hw(cfg.data), frozen)


def checkpoint_complexity(checkpoint: Path) -> dict[str, dict[str, Any]]:
    """{"run": ..., "paper_config": ...} for the model a training checkpoint holds (its config, its classes).

    The checkpoint is memory-mapped: only its config and category ids are read.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    cfg = config_from_checkpoint(ckpt, str(checkpoint))
    run = run_complexity(cfg, len(ckpt["cat_ids"]))
    ours_at_paper = paper_config_complexity(cfg.model.head, cfg.model.anchor)
    return {"run": run.to_dict(), "paper_config": ours_at_paper.to_dict()}
