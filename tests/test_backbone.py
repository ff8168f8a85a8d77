import math
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from tood.config import ModelConfig
from tood.model.backbone import (
    FPN,
    PretrainedBackboneError,
    ResNetC3C5,
    WeightsUnavailableError,
    build_backbone,
)

STRIDES = (8, 16, 32, 64, 128)


@pytest.mark.parametrize("hw", [(128, 128), (96, 160)])
def test_five_maps_with_strides_8_to_128(hw):
    torch.manual_seed(0)
    model = build_backbone(ModelConfig(depth=18, fpn_channels=16, gn_groups=4))
    feats = model(torch.randn(1, 3, *hw))
    assert [tuple(f.shape) for f in feats] == [
        (1, 16, math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in STRIDES
    ]


def test_resnet50_stage_channels():
    body = ResNetC3C5(50, pretrained="none", frozen_stages=1)
    c3, c4, c5 = body(torch.randn(1, 3, 64, 64))
    assert body.out_channels == (512, 1024, 2048)
    assert [c3.shape[1], c4.shape[1], c5.shape[1]] == [512, 1024, 2048]
    assert [c3.shape[-1], c4.shape[-1], c5.shape[-1]] == [8, 4, 2]


def test_extra_levels_are_on_the_p5_output_without_relu():
    """[R] add_extra_convs='on_output', relu_before_extra_convs=False: P6 = conv(P5), P7 = conv(P6)."""
    torch.manual_seed(0)
    fpn = FPN((8, 16, 32), 8)
    outs = fpn([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)])
    assert torch.allclose(outs[3], fpn.p6(outs[2]))
    assert torch.allclose(outs[4], fpn.p7(outs[3]))
    assert (outs[3] < 0).any()  # P6 enters P7's conv with its negative values: no ReLU in between


def test_from_scratch_trains_everything_with_plain_bn():
    model = build_backbone(
        ModelConfig(depth=18, pretrained="none", frozen_stages=1, fpn_channels=16, gn_groups=4)
    )
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_offline_pretrained_request_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache

    def no_network(*args, **kwargs):  # in case this machine does have a network: never download here
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone(ModelConfig(depth=18, pretrained="imagenet", fpn_channels=16, gn_groups=4))
    message = str(err.value)
    assert "no network" in message and "pretrained: none" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_pretrained_loads_from_the_hub_cache_and_freezes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    body = ResNetC3C5(18, pretrained="imagenet", frozen_stages=1, norm="frozen_bn")
    assert torch.equal(body.stages[1][0].conv1.weight, reference.layer2[0].conv1.weight)
    assert torch.equal(body.stem[1].running_var, reference.bn1.running_var)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())  # all BN frozen (norm_eval)
    assert not any(p.requires_grad for p in (*body.stem.parameters(), *body.stages[0].parameters()))
    assert all(p.requires_grad for stage in body.stages[1:] for p in stage.parameters())


def test_r50_fpn_trainable_params_match_table1_full_detector():
    """Table 1 full-detector params (ATSS rows): 31.98M T-Head, 32.07M parallel. mmcv's counter counts
    trainable parameters only, i.e. without the frozen stem + stage 1 (derived: 27,151,360 + head)."""
    model = build_backbone(ModelConfig(depth=50, fpn_channels=256))  # from scratch: BN affine are Parameters
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for m in (model.body.stem, model.body.stages[0]) for p in m.parameters())
    assert total - frozen == 27_151_360
    assert round((total - frozen + 4_823_790) / 1e6, 2) == 31.98
    assert round((total - frozen + 4_918_618) / 1e6, 2) == 32.07


def test_bf16_autocast_p6_p7_gradients_stay_finite_on_1x1_maps():
    """torch 2.13 CPU bf16 autocast: a 3x3 stride-2 conv on a 1x1 map returns non-finite weight gradients
    in a large share of calls (157/200 when measured on nn.Conv2d(16, 16, 3, stride=2, padding=1) alone).
    FPN runs P6/P7 in fp32; this checks that it stays so."""

    def nonfinite(module: nn.Module, x: Tensor, repeats: int = 40) -> int:
        count = 0
        for _ in range(repeats):
            module.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = module(x)
            sum(o.float().sum() for o in (out if isinstance(out, list) else [out])).backward()
            count += any(not torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
        return count

    torch.manual_seed(0)
    fpn = FPN((16, 32, 64), 16)
    feats = [torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2), torch.randn(2, 64, 1, 1)]  # P5 1x1
    assert nonfinite(fpn, feats) == 0


def _pretrain_checkpoint(path, depth=18, seed=0):
    """A checkpoint as the `pretrain` stage writes it (tood.engine.pretrain.save_backbone), from a random classifier."""
    from tood.config import PretrainConfig
    from tood.engine.pretrain import build_classifier, save_backbone

    torch.manual_seed(seed)
    classifier = build_classifier(depth, 12)
    for m in classifier.modules():  # non-trivial statistics, so loading them into FrozenBN is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    save_backbone(path, classifier, depth, PretrainConfig(), {"top1_val": 0.5})
    return classifier


def test_pretrain_checkpoint_loads_into_frozen_bn_and_freezes_stem_and_stage1(tmp_path):
    classifier = _pretrain_checkpoint(tmp_path / "backbone.pt")
    body = ResNetC3C5(18, pretrained=str(tmp_path / "backbone.pt"), frozen_stages=1, norm="frozen_bn")
    assert torch.equal(body.stages[2][1].conv2.weight, classifier.layer3[1].conv2.weight)
    assert torch.equal(body.stem[1].running_mean, classifier.bn1.running_mean)
    assert torch.equal(body.stages[0][0].bn1.running_var, classifier.layer1[0].bn1.running_var)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert not any(p.requires_grad for p in (*body.stem.parameters(), *body.stages[0].parameters()))
    assert all(p.requires_grad for stage in body.stages[1:] for p in stage.parameters())
    classifier.eval()  # C5 of the loaded body == the classifier's layer4 output (eval-mode BN)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        c = classifier
        expected = c.layer4(c.layer3(c.layer2(c.layer1(c.maxpool(c.relu(c.bn1(c.conv1(x))))))))
        assert torch.allclose(body(x)[2], expected, atol=1e-5)


def test_pretrain_checkpoint_path_is_relative_to_dvc_root(tmp_path, monkeypatch):
    _pretrain_checkpoint(tmp_path / "runs" / "backbone.pt")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir("/")
    ResNetC3C5(18, pretrained="runs/backbone.pt", frozen_stages=1, norm="frozen_bn")


def test_missing_or_wrong_depth_pretrain_checkpoint_fails_naming_it(tmp_path):
    with pytest.raises(PretrainedBackboneError, match="no such file.*dvc repro pretrain"):
        ResNetC3C5(18, pretrained=str(tmp_path / "nope.pt"), frozen_stages=1)
    _pretrain_checkpoint(tmp_path / "r18.pt")
    with pytest.raises(PretrainedBackboneError, match=r"r18.pt is not a backbone checkpoint of a ResNet-34"):
        ResNetC3C5(34, pretrained=str(tmp_path / "r18.pt"), frozen_stages=1)
