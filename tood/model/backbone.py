"""ResNet (torchvision) C3-C5 + FPN P3-P7, strides 8..128 [R: tood_r50_fpn_1x_coco.py].

Reference neck: FPN(start_level=1, add_extra_convs='on_output', num_outs=5) with mmdet's default
relu_before_extra_convs=False, so P6 = conv3x3/2(P5 output) and P7 = conv3x3/2(P6) with no ReLU
in between (FCOS's config turns that ReLU on; TOOD's and ATSS's do not). We follow the TOOD config.

Initialisation (`model.pretrained`):
- "imagenet" (COCO recipe): torchvision's ImageNet weights.
- a path: the body of a classifier written by the `pretrain` stage (tood/engine/pretrain.py), our offline
  stand-in for ImageNet (the shapes profiles).
  With either, the recipe's freezing applies [R]: the stem plus the first `frozen_stages` stages get no
  gradient, and `norm: frozen_bn` makes every BN a FrozenBatchNorm2d holding the pretrained statistics
  (mmdet's norm_eval=True + frozen affine).
- "none" (from scratch): nothing frozen; `norm: bn` is plain trainable BatchNorm. `sync_bn` is the same
  layer, converted to SyncBatchNorm by tood.engine.train under multi-GPU DDP. `frozen_bn` from scratch is an
  identity BN (mean 0, var 1): no normalisation at all, so every rank computes exactly what one process
  would (the DDP equality test uses it).
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models
from torchvision.ops import misc

from tood.config import ModelConfig, resolve_repo_path

NO_WEIGHTS = "none"  # model.pretrained value that loads nothing (also used to rebuild a trained detector)

# depth -> (builder, ImageNet weights, C3-C5 channels); mmdet's torchvision://resnetXX are the V1 weights
_RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, (128, 256, 512)),
    34: (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, (128, 256, 512)),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
    101: (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
}


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers and state_dict keys), computed by F.batch_norm in
    inference mode: one pass instead of `x * scale + bias`, and under bf16 autocast its output stays bf16
    where torchvision's is promoted to fp32 by the fp32 scale, which cost a cast back before every conv
    (bench/RESULTS.md §5). fp32 results agree to rounding (tests/test_step_equivalence.py)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were requested but are neither in the torch hub cache nor downloadable."""


def imagenet_state_dict(weights: models.WeightsEnum, probe_timeout_s: float = 10.0) -> dict:
    """Load torchvision ImageNet weights from the hub cache, downloading them when the network allows.

    Fails fast with WeightsUnavailableError (a short TCP probe before the download) instead of hanging.
    """
    filename = Path(urlparse(weights.url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    help_text = (
        f"ImageNet weights {filename} are not in the torch hub cache and cannot be downloaded from "
        f"{weights.url} (this machine seems to have no network). Either set `model.pretrained: none` "
        f"in params.yaml, or download the file on a machine with network access and copy it to "
        f"{cached} (i.e. $TORCH_HOME/hub/checkpoints/{filename}; TORCH_HOME defaults to ~/.cache/torch)."
    )
    try:
        if not cached.exists():
            host = urlparse(weights.url).hostname
            socket.create_connection((host, 443), timeout=probe_timeout_s).close()
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=True, check_hash=True, weights_only=True
        )
    except (URLError, OSError) as e:
        raise WeightsUnavailableError(f"{help_text} Cause: {e}") from e


class PretrainedBackboneError(RuntimeError):
    """A `model.pretrained` checkpoint path is missing, unreadable or made for another ResNet depth."""


def pretrained_state_dict(pretrained: str, depth: int) -> dict | None:
    """The ResNet body weights `model.pretrained` names (without fc), or None for "none"."""
    if pretrained == NO_WEIGHTS:
        return None
    if pretrained == "imagenet":
        return {k: v for k, v in imagenet_state_dict(_RESNETS[depth][1]).items() if not k.startswith("fc.")}
    path = resolve_repo_path(pretrained)
    if not path.is_file():
        raise PretrainedBackboneError(
            f"model.pretrained: {pretrained}: no such file ({path}); run the `pretrain` stage "
            "(dvc repro pretrain), or use none / imagenet"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or ckpt.get("depth") != depth:
        got = ckpt.get("depth") if isinstance(ckpt, dict) else None
        raise PretrainedBackboneError(
            f"model.pretrained: {path} is not a backbone checkpoint of a ResNet-{depth} (depth {got}); "
            "re-run the `pretrain` stage with this model.depth"
        )
    return ckpt["state_dict"]


class ResNetC3C5(nn.Module):
    """torchvision ResNet without avgpool/fc; forward returns [C3, C4, C5] (strides 8, 16, 32)."""

    def __init__(self, depth: int, pretrained: str, frozen_stages: int, norm: str = "bn"):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth {depth} not supported; choose one of {sorted(_RESNETS)}")
        builder, _, self.out_channels = _RESNETS[depth]
        state_dict = pretrained_state_dict(pretrained, depth)  # fail before building
        if norm not in ("bn", "sync_bn", "frozen_bn"):
            raise ValueError(f"unknown norm {norm!r}; expected 'bn', 'sync_bn' or 'frozen_bn'")
        net = builder(weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
        del net.fc  # unused: the detector reads C3-C5
        if state_dict is not None:
            net.load_state_dict(state_dict)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        if pretrained != NO_WEIGHTS:  # [R] frozen_stages=1: stem + layer1; from scratch nothing is frozen
            frozen = [self.stem, *self.stages[: max(frozen_stages, 0)]] if frozen_stages >= 0 else []
            for module in frozen:
                module.requires_grad_(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)  # (B, 64, H/4, W/4)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[1:]  # C3, C4, C5


class FPN(nn.Module):
    """Lateral 1x1 + top-down nearest upsampling + 3x3 output convs on C3-C5; P6, P7 'on_output' [R].

    Convs are xavier-uniform with zero bias, as mmdet's FPN initialises them.
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.output = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        )
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]  # (B, F, H_l, W_l) each
        for i in range(len(laterals) - 1, 0, -1):  # top-down; size= handles odd map sizes
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output, laterals)]  # P3, P4, P5
        # P6/P7 in fp32 even under autocast: they are ~0.1% of the FLOPs, and torch 2.13's CPU bf16 conv
        # (3x3, stride 2) returns non-finite weight gradients at random on a 1x1 input, which P6 -> P7 is
        # at the default 128 px (tests/test_backbone.py keeps a repro).
        with torch.autocast(outs[-1].device.type, enabled=False):
            p6 = self.p6(outs[-1].float())  # on the P5 output, not on C5 [R: add_extra_convs='on_output']
            p7 = self.p7(p6)  # no ReLU before it [R: relu_before_extra_convs=False]
        return [*outs, p6, p7]


class BackboneFPN(nn.Module):
    def __init__(self, depth: int, pretrained: str, frozen_stages: int, fpn_channels: int, norm: str = "bn"):
        super().__init__()
        self.body = ResNetC3C5(depth, pretrained, frozen_stages, norm)
        self.fpn = FPN(self.body.out_channels, fpn_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) -> [P3..P7], each (B, F, ceil(H/s), ceil(W/s)), s = 8, 16, 32, 64, 128."""
        return self.fpn(self.body(images))


def build_backbone(cfg: ModelConfig) -> nn.Module:
    return BackboneFPN(cfg.depth, cfg.pretrained, cfg.frozen_stages, cfg.fpn_channels, cfg.norm)
